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

release_file_pages: the daemon's start-up runs code it never runs again (every library's import and
module init, OpenCV's binding tables, LiteRT's and XNNPACK's set-up, the model files read while the
weights are packed). Those clean file pages stay mapped, so they count in RSS until the kernel is short
of memory. The daemon drops them after the models are loaded and again at READY=1 (madvise
MADV_DONTNEED); a page that is needed again comes back from the page cache, with the same bytes, as a
minor fault. Only mappings that cannot hold the process's own data are touched: file-backed, not
writable, and no private (copy-on-write) page in them, which rules out relocated data a library
made read-only after writing it. The anonymous memory (heap, buffers, packed weights) is not affected.
"""
from __future__ import annotations

import ctypes
import os

MALLOC_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "2"}

_MADV_DONTNEED = 4      # Linux
_libc = None


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


def clean_file_spans(smaps: str, path: str | None = None) -> list[tuple[int, int]]:
    """(start, end) of the mappings in `smaps` (the text of /proc/PID/smaps) whose resident pages can be
    dropped without losing anything: backed by a file (`path` only, if given), not writable, and holding
    no anonymous (copy-on-write) page."""
    spans: list[tuple[int, int]] = []
    cur = None

    def close(m):
        if m is not None and m[2] == 0:
            spans.append((m[0], m[1]))
    for ln in smaps.splitlines():
        fields = ln.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
            close(cur)
            name = fields[5] if len(fields) == 6 else ""
            lo, _, hi = fields[0].partition("-")
            # anon stays None (= unknown, kept) until its Anonymous: line says 0
            keep_out = "w" in fields[1] or not name.startswith("/") or (path is not None and name != path)
            cur = None if keep_out else [int(lo, 16), int(hi, 16), None]
        elif cur is not None and fields and fields[0] == "Anonymous:":
            cur[2] = int(fields[1])
    close(cur)
    return spans


def _shared_file_spans(path: str | None) -> tuple[list[tuple[int, int]], bool]:
    """From /proc/self/maps (cheap): the not-writable shared file mappings (`path` only, if given), which
    cannot hold anonymous pages, and whether a not-writable private one is there too. A model file is
    mapped shared, so releasing it needs no smaps."""
    spans, private = [], False
    with open("/proc/self/maps") as f:
        for ln in f:
            fields = ln.rstrip("\n").split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1] or not fields[5].startswith("/") \
                    or (path is not None and fields[5] != path):
                continue
            if fields[1][3] == "s":
                lo, _, hi = fields[0].partition("-")
                spans.append((int(lo, 16), int(hi, 16)))
            else:
                private = True
    return spans, private


def release_file_pages(path=None) -> int:
    """Drop this process's resident pages of its clean file mappings (`clean_file_spans`; those of `path`
    only, if given). Returns the bytes of the mappings advised: 0 where there is no /proc/self/smaps or no
    madvise (not Linux), which keeps the pages."""
    global _libc
    try:
        real = None if path is None else os.path.realpath(path)
        spans, private = _shared_file_spans(real)
        if private:     # only smaps knows whether a private mapping holds copy-on-write pages (3-7 ms to read)
            with open("/proc/self/smaps") as f:
                spans = clean_file_spans(f.read(), real)
        if not spans:
            return 0
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return sum(hi - lo for lo, hi in spans if _libc.madvise(lo, hi - lo, _MADV_DONTNEED) == 0)
    except (OSError, AttributeError, ValueError):
        return 0


def resident_file_mb() -> float | None:
    """RssFile of this process (MB), None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("RssFile:"):
                    return int(ln.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None
