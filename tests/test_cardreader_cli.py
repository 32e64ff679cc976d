"""`cardreader simulate --pty` as a separate process driven through stdin; fault-spec parsing;
bench_cardreader returns the documented JSON fields (its timing is not asserted here)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from device.cardreader import protocol as P
from device.cardreader.commands import register
from kyc_tools.bench.cardreader import bench_cardreader
from device.cardreader.reader import CardReader
from device.cardreader.simulator import Fault
from device.config import ReaderConfig
from device.errors import CardError


def test_fault_spec_parsing():
    f = Fault.parse("slow:2.5")
    assert (f.kind, f.delay_s, f.cmd, f.times) == ("slow", 2.5, P.Cmd.READ_BASE, 1)
    f = Fault.parse("noise@2001x*")
    assert (f.kind, f.cmd, f.times) == ("noise", 0x2001, None)
    f = Fault.parse("disconnect:0.5@anyx3")
    assert (f.kind, f.delay_s, f.cmd, f.times) == ("disconnect", 0.5, None, 3)
    with pytest.raises(ValueError):
        Fault.parse("gremlins")


def test_register_adds_cardreader_simulate():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="cmd"))
    a = ap.parse_args(["cardreader", "simulate", "--pty", "--type", "permit_hmt", "--fault", "noise",
                       "--fault", "slow:1"])
    assert a.type == "permit_hmt" and a.fault == ["noise", "slow:1"] and callable(a.func)


def test_simulate_subprocess_serves_a_card_and_takes_commands():
    p = subprocess.Popen([sys.executable, "-m", "device.cardreader.commands", "simulate", "--pty",
                          "--type", "foreign", "--fault", "noise@*x*"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        assert info["card"] == "foreign"
        r = CardReader(ReaderConfig(port=info["port"], timeout_s=0.3, retries=1)).open()
        try:
            assert r.read_card().record.card_type == "foreign"
            p.stdin.write("remove\n")
            p.stdin.flush()
            assert json.loads(p.stdout.readline())["ok"] == "remove"
            with pytest.raises(CardError) as ei:
                r.read_card()
            assert ei.value.reason == "card_removed"
            p.stdin.write("insert unsupported\n")
            p.stdin.flush()
            p.stdout.readline()
            with pytest.raises(CardError) as ei:
                r.read_card()
            assert ei.value.reason == "unsupported_card_type"
        finally:
            r.close()
        p.stdin.write("quit\n")
        p.stdin.flush()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_bench_reports_wire_and_host_time():
    res = bench_cardreader(argparse.Namespace(n=3, baud=115200))
    assert res["bytes_per_read"] == 3 * 10 + 15 + 19 + 1295
    assert res["wire_ms_per_read"] == pytest.approx(1359 * 10 / 115200 * 1000, abs=0.01)
    assert res["read_ms_paced"]["median"] >= res["paced_reply_wire_ms"]   # pacing really happened
    for k in ("median", "p95", "max"):
        assert k in res["host_beyond_wire_ms"] and k in res["read_ms_unpaced"]


def test_fuzz_runner_counts_inputs_and_outcomes():
    from kyc_tools.fuzz import run
    res = run(600, seed=3)
    assert res["inputs"] == 600 == res["frame_inputs"] + res["record_inputs"] + res["payload_inputs"]
    assert res["crashes"] == 0 and res["ok"] > 0 and res["typed_errors"] > 0
    assert res["ok"] + res["typed_errors"] == 600
