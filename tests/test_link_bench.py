"""Smoke test of `kyc-edge bench link` at a small size: the bench itself works and its loss /
duplicate / order checks hold. (The 1,000-verdict / 20-kill figures come from running the bench,
not from a timed test.)"""
from __future__ import annotations

import argparse

from kyc_tools.bench.link import run as bench_link


def test_bench_link_small_run_loses_nothing():
    args = argparse.Namespace(count=60, broker_kills=3, rate=150.0, latency_n=20, seed=7)
    r = bench_link(args)
    bk, pk, lat = r["broker_kills"], r["publisher_kill"], r["latency"]
    assert bk["verdicts"] == 60 and bk["broker_kills"] == 3
    assert bk["lost"] == 0 and bk["received_unique"] == 60 and bk["duplicates_after_dedup"] == 0
    assert bk["order_kept"] and bk["forged_or_invalid"] == 0 and bk["outbox_depth_end"] == 0
    assert bk["link_stats"]["connects"] >= 2                # the kills really cut the link
    assert pk["lost"] == 0 and pk["reported_stored"] == 60 and pk["order_kept"]
    assert 0 < pk["killed_after_reported"] < 60 and pk["child_drained"]
    assert lat["journal_mode"] == "wal" and lat["synchronous"] == 2 and lat["n"] == 20
    assert r["seed"] == 7
