"""Issue 20, fleet side (items 6, 7, 11) against real mosquitto and real device processes
(tests/fleet_standin.py: the real boot_guard + UpdateAgent + Link + TFLite self-test).

* item 6: an unverified update message (unknown key, bad signature, garbage) changes nothing in
  the retained update/status but a `rejected` count: none of its values (bundle_version) is echoed,
  and a staged rollout sees no failure.
* item 7: inline chunks are written only once a page pinned by the signed manifest announced their
  sha256; injected pages/chunks are dropped and the genuine update completes. A transport failure
  (truncated) releases the nonce, so a re-send of the same signed manifest succeeds.
* item 11: config patches stack: threshold 0.55 from a config bundle survives a models-only bundle;
  a bundle declaring `config_complete` replaces the fleet layer."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time

from device import config as config_mod
from device.verdict import rfc3339
from device.fleet import manifest as mf
from device.fleet import slots
from kyc_tools.fleet.commands import build_bundle, sign_bundle
from kyc_tools.fleet.rollout import messages, update_topic
from tests.test_fleet_e2e import (SITE, Dev, apply_good, devices, envelope, factory, fc, fleet_key,  # noqa: F401
                                  make_bundle, online, states_of, variant, wait_update)


def _publish_raw(fc, topic: str, msgs: list[bytes], rate: float = 300.0) -> None:
    infos = []
    t0 = time.monotonic()
    for n, m in enumerate(msgs):
        infos.append(fc.client.publish(topic, m, qos=1))
        ahead = t0 + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    for i in infos:
        i.wait_for_publish(10)


def _chunk(nonce: str, name: str, offset, data: str) -> bytes:
    return json.dumps({"chunk": {"nonce": nonce, "name": name, "offset": offset, "data": data}}).encode()


def test_unverified_update_messages_echo_nothing_into_the_retained_status(tmp_path, broker, fleet_key, factory, fc,
                                                                          devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "u1", pub, factory)
    devices.append(d)
    d.start()
    online(fc, d)
    apply_good(fc, d, tmp_path, key, factory, 2)
    n_events = len(fc.events)
    other_key, _, _ = mf.keygen(tmp_path / "otherkey")
    b = make_bundle(tmp_path, key, factory, 77, vectors=False)
    forged = [
        mf.sign(envelope(b)["manifest"], mf.load_private_key(other_key)),                # unknown_key, v77
        {**envelope(b), "manifest": {**envelope(b)["manifest"], "bundle_version": 78}},   # bad_signature, v78
        {"manifest": {"bundle_version": 79, "format": 1}, "sig": "x"},                     # malformed, v79
    ]
    topic = update_topic("kyc/v1", f"{SITE}/{d.name}")
    for n, env in enumerate(forged, 1):
        fc.client.publish(topic, json.dumps(env), qos=1).wait_for_publish(5)
        wait_update(fc, d, lambda u, n=n: u.get("rejected") == n, timeout=30)
        time.sleep(1.05)                 # the agent re-publishes a rejection at most once a second
    new = [u for _, dev, u in fc.events[n_events:] if dev == d.key]
    assert new and all(set(u) <= {"state", "bundle_version", "target_version", "at", "rejected", "rejected_reason"}
                       for u in new), new
    for u in new:                        # the genuine state is kept; nothing of the forgeries is in it
        assert (u["state"], u["bundle_version"], u["target_version"]) == ("applied", 2, 2), u
        assert not {77, 78, 79} & set(u.values())
    assert [u["rejected_reason"] for u in new] == ["unknown_key", "bad_signature", "malformed"]
    assert fc.results(77) == {} and fc.results(78) == {} and fc.results(79) == {}   # a rollout counts nothing
    assert {r["device"]: r for r in fc.table()}[d.key]["rejected"] == 3              # `fleet status` shows them
    # a burst inside one second is summed up in one trailing status, still with nothing of its own
    for _ in range(5):
        fc.client.publish(topic, json.dumps(forged[0]), qos=1)
    u = wait_update(fc, d, lambda u: u.get("rejected") == 8, timeout=30)
    assert (u["state"], u["target_version"], u["rejected_reason"]) == ("applied", 2, "unknown_key")
    # a genuine update afterwards is unaffected
    apply_good(fc, d, tmp_path, key, factory, 3)
    assert d.alive() and d.version() == 3


def test_injected_inline_chunks_are_dropped_and_the_genuine_update_completes(tmp_path, broker, fleet_key, factory, fc,
                                                                             devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "i1", pub, factory)
    devices.append(d)
    d.start()
    online(fc, d)
    b = make_bundle(tmp_path, key, factory, 2, pad=900_000, vectors=False)     # 1.13 MB: two pages
    env = envelope(b)
    m = env["manifest"]
    art = m["artifacts"][0]
    name, nonce, cb = art["name"], m["nonce"], art["chunk_bytes"]
    genuine = messages(env, b / "artifacts")
    assert len(art["pages"]) == 2
    assert json.loads(genuine[1])["page"]["index"] == 0 and "chunk" in json.loads(genuine[2])
    p1 = next(i for i, x in enumerate(genuine) if json.loads(x).get("page", {}).get("index") == 1)
    junk = base64.b64encode(os.urandom(cb)).decode()
    fake_page = json.dumps({"page": {"nonce": nonce, "name": name, "index": 0,
                                     "sha256": [hashlib.sha256(os.urandom(8)).hexdigest()] * 3}}).encode()
    early = [_chunk(nonce, name, 0, junk),                            # before any page: not announced yet
             fake_page,                                               # a page the manifest does not pin
             _chunk(nonce, name, art["size"] + cb, junk),             # beyond the declared size
             _chunk(nonce, name, 1, junk),                            # not on a chunk boundary
             _chunk(nonce, name, "0", "!!not base64!!")]              # malformed
    after_page = [_chunk(nonce, name, 0, junk), _chunk(nonce, name, cb, junk[:100])]   # wrong data for chunks 0, 1
    k1 = mf.PAGE_CHUNKS * cb                                           # first chunk of page 1
    in_page1 = [_chunk(nonce, name, k1, junk),
                json.dumps({"page": {"nonce": nonce, "name": name, "index": 1, "sha256": ["0" * 64]}}).encode()]
    msgs = [genuine[0], *early, genuine[1], *after_page, *genuine[2:p1], *in_page1, genuine[p1],
            _chunk(nonce, name, k1, junk), *genuine[p1 + 1:]]
    _publish_raw(fc, update_topic("kyc/v1", f"{SITE}/{d.name}"), msgs)
    u = wait_update(fc, d, lambda u: u["state"] in ("applied", "failed", "rolled_back"), timeout=90)
    assert (u["state"], u["bundle_version"]) == ("applied", 2), (u, d.logs())
    assert "failed" not in states_of(fc, d, 2)
    got = (slots.active_bundle(d.state) / "models" / name).read_bytes()
    assert hashlib.sha256(got).hexdigest() == art["sha256"]
    assert "inline message dropped" in d.logs()


def test_a_truncated_inline_update_can_be_resent_with_the_same_signed_manifest(tmp_path, broker, fleet_key, factory,
                                                                               fc, devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "t1", pub, factory, download_timeout_s=3)
    devices.append(d)
    d.start()
    online(fc, d)
    b = make_bundle(tmp_path, key, factory, 2)
    env = envelope(b)
    msgs = messages(env, b / "artifacts")
    topic = update_topic("kyc/v1", f"{SITE}/{d.name}")
    _publish_raw(fc, topic, msgs[: len(msgs) // 2])          # the rest is dropped on the way
    u = wait_update(fc, d, lambda u: u["state"] == "failed" and u.get("target_version") == 2, timeout=60)
    assert u["reason"] == "truncated" and d.version() == 0
    t_fail = u["at"]                  # (the link may coalesce intermediate states: compare times)
    fc.publish(env, b / "artifacts", f"{SITE}/{d.name}")      # the operator re-sends the same signed bundle
    u = wait_update(fc, d, lambda u: u["state"] in ("applied", "failed") and u["at"] > t_fail, timeout=90)
    assert (u["state"], u["bundle_version"]) == ("applied", 2), u
    # replay protection is intact for what was applied: a further re-send is ignored, not re-applied
    n = len(states_of(fc, d, 2))
    fc.publish(env, b / "artifacts", f"{SITE}/{d.name}")
    time.sleep(1.5)
    assert states_of(fc, d, 2)[n:] == [] and d.version() == 2


def test_an_update_cut_short_by_a_power_cut_can_be_resent_after_the_restart(tmp_path, broker, fleet_key, factory,
                                                                           fc, devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "k1", pub, factory, download_timeout_s=120)
    devices.append(d)
    d.start()
    online(fc, d)
    b = make_bundle(tmp_path, key, factory, 2)
    env = envelope(b)
    msgs = messages(env, b / "artifacts")
    _publish_raw(fc, update_topic("kyc/v1", f"{SITE}/{d.name}"), msgs[: len(msgs) // 2])
    wait_update(fc, d, lambda u: u["state"] == "downloading" and u.get("target_version") == 2)
    d.proc.send_signal(signal.SIGKILL)                       # power cut mid-download
    d.proc.wait(10)
    assert fc.wait_for(lambda: fc.status.get(d.key, {}).get("state") == "offline", 20)   # its will
    t_restart = rfc3339(time.time())
    d.start()
    online(fc, d)
    wait_update(fc, d, lambda u: u["at"] > t_restart)         # the new agent is up and subscribed
    fc.publish(env, b / "artifacts", f"{SITE}/{d.name}")      # the same signed manifest again
    u = wait_update(fc, d, lambda u: u["state"] in ("applied", "failed") and u.get("target_version") == 2
                    and u["at"] > t_restart, timeout=90)
    assert (u["state"], u["bundle_version"]) == ("applied", 2), (u, d.logs())
    assert "replayed_nonce" not in d.logs() and d.version() == 2


def test_config_patches_stack_a_models_only_bundle_keeps_the_threshold(tmp_path, broker, fleet_key, factory, fc,
                                                                        devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "s1c", pub, factory)
    devices.append(d)
    d.start()
    online(fc, d)
    base = config_mod.load(d.cfg)
    default = base.match.threshold
    assert default != 0.55

    def publish(version, patch=None, complete=False):
        bd = tmp_path / f"cb{version}"
        build_bundle(variant(factory, bd / "src", version), bd, version, patch, vectors=False,
                     config_complete=complete)
        sign_bundle(bd, str(key), [d.name])
        fc.publish(envelope(bd), bd / "artifacts", f"{SITE}/{d.name}")
        wait_update(fc, d, lambda u: u["state"] == "applied" and u["bundle_version"] == version)

    def effective() -> float:
        return slots.merged_config(base, slots.active_bundle(d.state)).match.threshold

    def applied_thresholds() -> list[float]:
        return [json.loads(x)["threshold"] for x in d.logs().splitlines()
                if x.startswith('{"event": "applied"')]

    publish(2, {"match": {"threshold": 0.55}})
    assert effective() == 0.55
    publish(3)                                                # models only
    assert effective() == 0.55 and slots.config_patch(slots.active_bundle(d.state)) == {"match": {"threshold": 0.55}}
    publish(4, {"mqtt": {"status_interval_s": 0}})            # another section: merged, threshold kept
    assert effective() == 0.55
    assert applied_thresholds() == [0.55, 0.55, 0.55]         # what the live pipeline was applied with
    publish(5, complete=True)                                 # declares the whole fleet layer: nothing
    assert effective() == default and slots.config_patch(slots.active_bundle(d.state)) == {}
    assert applied_thresholds()[-1] == default
