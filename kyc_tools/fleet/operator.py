"""`kyc-edge fleet enrol` and `kyc-edge fleet status --dsn`: the operator database's view of the fleet.

enrol: registers a box's verdict-signing key (the JSON `kyc-edge keys show --format json` prints)
explicitly; the ingest never trusts a key on first use.

status: one row per enrolled device from `devices` (retained status, update/status) and `verdicts`:
    state     online  | the last status said online and arrived within --stale-after seconds
              stale   | it said online, but nothing newer arrived within --stale-after (a box whose
                        broker connection is half-open, or whose shop bridge is down)
              offline | it said offline (LWT) or stopping, or never reported
    last verdict, verdicts and pass rate over --window hours, outbox depth, alarms, model and bundle
    versions, update state.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from kyc_tools.verdicts import db as _db

STATUS_SQL = """
SELECT d.site, d.device, d.state, d.status, d.status_received_at, d.update_status,
       (SELECT count(*) FROM device_keys k WHERE k.site = d.site AND k.device = d.device AND k.revoked_at IS NULL),
       v.last_verdict, v.n, v.passed,
       (SELECT count(*) FROM quarantine q WHERE q.topic = %(prefix)s || '/' || d.site || '/' || d.device || '/verdict'
            AND q.last_at > now() - %(hours)s * interval '1 hour')
FROM devices d
LEFT JOIN LATERAL (
    SELECT max(decided_at) AS last_verdict, count(*) AS n, count(*) FILTER (WHERE result = 'pass') AS passed
    FROM verdicts WHERE site = d.site AND device = d.device
      AND decided_at > now() - %(hours)s * interval '1 hour') v ON true
ORDER BY d.site, d.device
"""


def _iso(t) -> str | None:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def fleet_rows(conn, *, stale_after_s: float = 180.0, window_h: float = 24.0, prefix: str = "kyc/v1",
               now: datetime | None = None) -> list[dict]:
    now = now or datetime.now(timezone.utc)
    out = []
    for (site, device, state, status, seen, upd, keys, last, n, passed, quar) in conn.execute(
            STATUS_SQL, {"prefix": prefix.rstrip("/"), "hours": float(window_h)}).fetchall():
        status = status or {}
        upd = upd or {}
        if state == "online":
            shown = "online" if seen and (now - seen).total_seconds() <= stale_after_s else "stale"
        else:
            shown = "offline"
        ob = status.get("outbox")
        depth = ob.get("depth") if isinstance(ob, dict) else status.get("outbox_depth")
        models = status.get("models") if isinstance(status.get("models"), dict) else {}
        out.append({
            "site": site, "device": device, "state": shown, "reported_state": state,
            "last_seen": _iso(seen), "enrolled_keys": int(keys),
            "last_verdict": _iso(last), "verdicts": int(n or 0),
            "pass_rate": round(passed / n, 4) if n else None,
            "quarantined": int(quar or 0),
            "outbox_depth": depth, "alarms": list(status.get("alarms") or []),
            "models": models, "bundle_version": upd.get("bundle_version", status.get("bundle_version")),
            "update": ({"state": upd.get("state"), "target_version": upd.get("target_version"),
                        "reason": upd.get("reason")} if upd else None),
        })
    conn.commit()
    return out


def print_table(rows: list[dict], file=None) -> None:
    file = file or sys.stdout     # looked up per call: a default bound at import outlives a redirect
    hdr = (f"{'SITE/DEVICE':34s} {'STATE':7s} {'LAST SEEN':20s} {'LAST VERDICT':20s} {'N':>5s} {'PASS':>6s} "
           f"{'OUTBOX':>6s} {'BUNDLE':>6s} {'UPDATE':18s} {'MODELS':24s} ALARMS")
    print(hdr, file=file)
    for r in rows:
        u = r["update"]
        upd = "-" if not u else (str(u["state"]).upper() + (f"({u['reason']})" if u.get("reason") else ""))
        models = ",".join(f"{k}={v}" for k, v in sorted(r["models"].items())) or "-"
        pr = "-" if r["pass_rate"] is None else f"{100 * r['pass_rate']:.0f}%"
        print(f"{r['site'] + '/' + r['device']:34s} {r['state']:7s} {r['last_seen'] or '-':20s} "
              f"{r['last_verdict'] or '-':20s} {r['verdicts']:>5d} {pr:>6s} {str(r['outbox_depth'] if r['outbox_depth'] is not None else '-'):>6s} "
              f"{str(r['bundle_version'] if r['bundle_version'] is not None else '-'):>6s} {upd[:18]:18s} "
              f"{models[:24]:24s} {','.join(r['alarms']) or '-'}", file=file)


def cmd_status_db(a) -> int:
    conn = _db.connect(a.dsn)
    try:
        rows = fleet_rows(conn, stale_after_s=a.stale_after, window_h=a.window, prefix=a.prefix)
    finally:
        conn.close()
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)
    return 0


def cmd_enrol(a) -> int:
    text = sys.stdin.read() if a.key in (None, "-") else (
        Path(a.key).read_text() if Path(a.key).is_file() else a.key)
    try:
        rec = json.loads(text)
    except ValueError:
        rec = {"public_key": text.strip()}          # a bare base64 / PEM key (then --site/--device)
    conn = _db.connect(a.dsn)
    try:
        _db.migrate(conn)
        conn.commit()
        site, device, kid, pub = _db.parse_key_record(rec, a.site, a.device)
        result = _db.enrol(conn, site, device, kid, pub, replace=a.replace)
    except _db.DbError as e:
        print(f"kyc-edge fleet enrol: {e}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    print(json.dumps({"result": result, "site": site, "device": device, "key_id": kid}))
    return 0


def register(sub) -> None:
    s = sub.add_parser("enrol", help="register a box's verdict-signing key in the operator database")
    s.add_argument("--dsn", required=True)
    s.add_argument("--key", default="-", help="FILE or JSON text from `kyc-edge keys show --format json` "
                   "(default: stdin)")
    s.add_argument("--site", help="required when the record does not name it")
    s.add_argument("--device", help="required when the record does not name it")
    s.add_argument("--replace", action="store_true", help="rotate: revoke the device's current key")
    s.set_defaults(func=cmd_enrol)
