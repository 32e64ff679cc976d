"""Whether a verified, targeted update manifest may start on this box: one pure function, no I/O.

`admit(manifest, policy, current)` answers accept or refuse-with-a-reason from the signed manifest,
the box's fleet policy and a snapshot of what the box has now (clock, running and staged versions,
whether the nonce was seen, free bytes). The agent gathers the snapshot, calls it, and does what
it says; the order of the checks is the order in which the reasons win.

Bundle updates (kind = bundle, versions are integers):
    not_yet_valid | expired -> replayed_nonce -> downgrade_refused -> daemon_too_old -> too_large -> disk_full
Software updates (kind = software, versions are dotted strings, the artifacts are wheels):
    software_unsupported -> malformed -> not_yet_valid | expired -> replayed_nonce -> downgrade_refused
    -> too_large -> disk_full
`consumes_nonce` says whether the refusal came after the nonce check (the nonce is then recorded,
so a re-send of the same signed message is a replay); the window checks come before it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from device.fleet import manifest as mf
from device.fleet.manifest import FleetError

WHEEL = re.compile(r"^([A-Za-z0-9_.]+)-([0-9][A-Za-z0-9_.+]*)-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$")


@dataclass(frozen=True)
class Policy:
    clock_skew_s: float
    max_bundle_bytes: int
    min_free_bytes: int
    daemon_version: str = "0"

    @classmethod
    def of(cls, fcfg, daemon_version: str = "0") -> "Policy":
        return cls(fcfg.clock_skew_s, fcfg.max_bundle_bytes, fcfg.min_free_bytes, daemon_version)


@dataclass(frozen=True)
class Current:
    now: float                           # wall clock (the manifest's window is in Unix seconds)
    nonce_seen: bool
    free_bytes: int                      # the least free space of the places the update writes to
    bundle_version: int = 0              # running bundle (0 = factory)
    staged_version: int | None = None    # bundle staged, not yet switched to
    software_version: str = "0"          # running daemon software
    staged_software: str | None = None
    software_supported: bool = True      # fleet.software_root is set up


@dataclass(frozen=True)
class Admission:
    ok: bool
    reason: str | None = None
    detail: str = ""
    consumes_nonce: bool = False         # record the nonce (accepted, or refused after the nonce check)

    def raise_if_refused(self) -> None:
        if not self.ok:
            raise FleetError(self.reason or "internal_error", self.detail)


def _refuse(reason: str, detail: str, *, after_nonce: bool) -> Admission:
    return Admission(False, reason, detail, after_nonce)


def admit(m: dict, policy: Policy, cur: Current) -> Admission:
    software = m.get("kind") == "software"
    if software:
        if not cur.software_supported:
            return _refuse("software_unsupported", "fleet.software_root is not set up", after_nonce=False)
        tsv = m.get("software_version")
        wheels = [a["name"] for a in m["artifacts"]]
        if not tsv or not wheels or not all(WHEEL.match(n) for n in wheels) or not any(
                WHEEL.match(n).group(1).lower() == "kyc_edge" and WHEEL.match(n).group(2) == tsv for n in wheels):
            return _refuse("malformed", "software bundle: wheels only, incl. kyc_edge-<software_version>",
                           after_nonce=False)
    try:
        mf.check_window(m, cur.now, policy.clock_skew_s)
    except FleetError as e:
        return _refuse(e.reason, e.detail, after_nonce=False)
    if cur.nonce_seen:
        return _refuse("replayed_nonce", f"nonce {m['nonce'][:8]} seen before", after_nonce=False)
    if software:
        running = max(mf.version_tuple(cur.software_version), mf.version_tuple(cur.staged_software or "0"))
        if mf.version_tuple(m["software_version"]) <= running and not m.get("allow_downgrade"):
            return _refuse("downgrade_refused", f"software {m['software_version']} <= {cur.software_version}",
                           after_nonce=True)
    else:
        tv = m["bundle_version"]
        running_v = max(cur.bundle_version, cur.staged_version or 0)
        if tv <= running_v and not m.get("allow_downgrade"):
            return _refuse("downgrade_refused", f"v{tv} <= v{running_v}", after_nonce=True)
        if m.get("min_daemon_version") and \
                mf.version_tuple(policy.daemon_version) < mf.version_tuple(m["min_daemon_version"]):
            return _refuse("daemon_too_old", f"{policy.daemon_version} < {m['min_daemon_version']}", after_nonce=True)
    total = mf.total_size(m)
    if total > policy.max_bundle_bytes:
        return _refuse("too_large", f"{total} > {policy.max_bundle_bytes} bytes", after_nonce=True)
    need = (4 * total if software else total) + policy.min_free_bytes   # software: the wheels, unpacked
    if cur.free_bytes < need:
        return _refuse("disk_full", f"{cur.free_bytes} bytes free, {need} needed", after_nonce=True)
    return Admission(True, consumes_nonce=True)
