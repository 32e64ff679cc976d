"""device.fleet.admission.admit(): the pure accept/refuse decision for a verified update manifest,
each refusal reason and the order in which they win; no files, no clock, no broker."""
from __future__ import annotations

import dataclasses

import pytest

from device.fleet.admission import Admission, Current, Policy, admit
from device.fleet.manifest import FleetError

NOW = 1_800_000_000.0
POLICY = Policy(clock_skew_s=60, max_bundle_bytes=1000, min_free_bytes=100, daemon_version="1.4.0")


def bundle(**over) -> dict:
    m = {"kind": "bundle", "bundle_version": 5, "nonce": "ab" * 16, "not_before": NOW - 10, "expires": NOW + 3600,
         "artifacts": [{"name": "detector.tflite", "size": 300}, {"name": "embedder.tflite", "size": 200}]}
    m.update(over)
    return m


def software(**over) -> dict:
    m = bundle(kind="software", software_version="1.5.0",
               artifacts=[{"name": "kyc_edge-1.5.0-py3-none-any.whl", "size": 100}])
    m.update(over)
    return m


def cur(**over) -> Current:
    c = Current(now=NOW, nonce_seen=False, free_bytes=10_000, bundle_version=3, software_version="1.4.0")
    return dataclasses.replace(c, **over)


def test_a_good_bundle_is_admitted_and_records_its_nonce():
    a = admit(bundle(), POLICY, cur())
    assert a == Admission(True, None, "", True)
    a.raise_if_refused()                                    # no exception


@pytest.mark.parametrize("m, c, reason, consumes", [
    (bundle(not_before=NOW + 3600), cur(), "not_yet_valid", False),
    (bundle(expires=NOW - 3600), cur(), "expired", False),
    (bundle(), cur(nonce_seen=True), "replayed_nonce", False),
    (bundle(bundle_version=3), cur(), "downgrade_refused", True),            # same as running
    (bundle(bundle_version=4), cur(staged_version=4), "downgrade_refused", True),   # same as staged
    (bundle(min_daemon_version="1.10.0"), cur(), "daemon_too_old", True),     # numeric, not lexical
    (bundle(artifacts=[{"name": "x", "size": 1001}]), cur(), "too_large", True),
    (bundle(), cur(free_bytes=599), "disk_full", True),                       # 500 + 100 reserve
    (software(), cur(software_supported=False), "software_unsupported", False),
    (software(artifacts=[{"name": "evil.sh", "size": 10}]), cur(), "malformed", False),
    (software(software_version="1.6.0"), cur(), "malformed", False),          # no kyc_edge-1.6.0 wheel
    (software(software_version="1.4.0", artifacts=[{"name": "kyc_edge-1.4.0-py3-none-any.whl", "size": 1}]),
     cur(), "downgrade_refused", True),
    (software(), cur(staged_software="1.5.0"), "downgrade_refused", True),
    (software(), cur(free_bytes=499), "disk_full", True),                     # 4 x 100 unpacked + 100
])
def test_each_refusal_reason(m, c, reason, consumes):
    a = admit(m, POLICY, c)
    assert not a.ok and a.reason == reason and a.consumes_nonce is consumes
    with pytest.raises(FleetError) as ei:
        a.raise_if_refused()
    assert ei.value.reason == reason


def test_allow_downgrade_and_the_edges_that_still_pass():
    assert admit(bundle(bundle_version=2, allow_downgrade=True), POLICY, cur()).ok
    assert admit(bundle(min_daemon_version="1.4.0"), POLICY, cur()).ok
    assert admit(bundle(), POLICY, cur(free_bytes=600)).ok
    assert admit(bundle(not_before=NOW + 59), POLICY, cur()).ok                # within the clock skew
    assert admit(software(), POLICY, cur(free_bytes=500)).ok
    assert admit(software(software_version="1.3.0", allow_downgrade=True,
                          artifacts=[{"name": "kyc_edge-1.3.0-py3-none-any.whl", "size": 1}]), POLICY, cur()).ok


def test_the_first_failing_check_wins():
    m = bundle(expires=NOW - 3600, bundle_version=1, artifacts=[{"name": "x", "size": 5000}])
    assert admit(m, POLICY, cur(nonce_seen=True, free_bytes=0)).reason == "expired"
    m = bundle(bundle_version=1, artifacts=[{"name": "x", "size": 5000}])
    assert admit(m, POLICY, cur(nonce_seen=True)).reason == "replayed_nonce"
    assert admit(m, POLICY, cur()).reason == "downgrade_refused"
