"""The daemon's process-wide memory settings (issue 17; docs/performance.md "Memory"). Standard library only.

MALLOC_ENV is the glibc malloc tuning `kyc-edge run` is meant to run with. It is environment, read by
glibc before the first allocation, so it has to be set by whoever starts the process:
systemd/kyc-edge.service carries each pair as an `Environment=` line, and the bench starts its
`kyc-edge run` subprocess with the same pairs (kyc_tools/bench/frame.py `daemon_figures`), so the
daemon RSS the bench reports is the daemon the unit runs. tests/test_daemon_memory.py fails when the
unit and this constant disagree.

MALLOC_ARENA_MAX=2: glibc gives every thread that allocates concurrently an arena of its own (up to
8 per core), and memory freed in one arena is never reused by another. The daemon has a handful of
allocating threads (main/session, camera capture, broker link, the ahead embedder); each kept its own
partly empty heap. Two arenas: the daemon's RSS after READY=1 and its VmHWM through a session are
5-8 MB lower, at no measurable CPU cost (docs/performance.md). Fixing the mmap/trim thresholds
(MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_) was measured and is not used: it turns off glibc's
dynamic mmap threshold, every 1280x720 frame buffer is then a fresh mmap, and the page faults double
the decode time and slow the frame path.
"""
from __future__ import annotations

MALLOC_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "2"}


def daemon_env(env) -> dict[str, str]:
    """`env` with the daemon's malloc settings on top: how anything that starts `kyc-edge run` outside
    systemd (the demo, the bench) gives it the unit's environment."""
    return {**env, **MALLOC_ENV}


def unit_environment(text: str) -> dict[str, str]:
    """The variables a systemd unit's `Environment=` lines set (systemd.exec syntax: space-separated
    KEY=VALUE assignments, each optionally in double quotes; a later assignment wins)."""
    import shlex
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("Environment="):
            continue
        for item in shlex.split(line[len("Environment="):]):
            key, sep, value = item.partition("=")
            if sep:
                out[key] = value
    return out
