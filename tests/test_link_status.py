"""The box's CPU temperature is read once, by the link's status (device/link/status.py), from the
thermal zones; the daemon's health carries none that could overwrite it."""
from __future__ import annotations

from device import config as C
from device import verdict as V
from device.daemon import Daemon
from device.link.mqtt import Link
from device.link.outbox import Outbox
from device.link.status import cpu_temperature_c


def _zones(root, **temps):
    for name, text in temps.items():
        (root / name).mkdir(parents=True)
        (root / name / "temp").write_text(text)
    return root


def test_highest_readable_zone_wins(tmp_path):
    root = _zones(tmp_path / "thermal", thermal_zone0="45000\n", thermal_zone1="61500\n",
                  thermal_zone2="garbage\n", thermal_zone3="200000\n")   # 200 °C: a broken sensor
    assert cpu_temperature_c(root) == 61.5
    assert cpu_temperature_c(tmp_path / "none") is None


def test_status_carries_the_single_reading_not_the_health_callbacks(tmp_path):
    root = _zones(tmp_path / "thermal", thermal_zone0="45000\n", thermal_zone1="52300\n")
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    cfg = C.replace(C.Config(), **{"device.state_dir": str(state), "mqtt.url": "mqtt://127.0.0.1:1"})
    daemon = Daemon(None)
    assert "cpu_temp_c" not in daemon.health()                   # the daemon no longer reads it
    with Outbox(state / "outbox.sqlite", 5) as ob:
        link = Link(cfg, ob, signer=signer, thermal_root=root, health=daemon.health)
        st = link.status_payload()
        assert st["cpu_temp_c"] == 52.3 and st["reader"] == "starting"
        # a health callback that still reports a temperature cannot overwrite the link's reading
        link = Link(cfg, ob, signer=signer, thermal_root=root, health=lambda: {"cpu_temp_c": 99.0})
        assert link.status_payload()["cpu_temp_c"] == 52.3
        (root / "thermal_zone1" / "temp").write_text("57000\n")
        assert link.status_payload()["cpu_temp_c"] == 57.0       # read per status, not cached
