"""The runtime drops a model file's resident pages after the first invoke (device/memory.py
release_file_pages): on the real models, the mapped file stops counting in RSS, the outputs do not change,
and a writable mapping is never touched."""
from __future__ import annotations

import mmap
import os

import numpy as np

from device.memory import clean_file_spans, release_file_pages
from device.vision.runtime import ModelRuntime
from tests.conftest import need


def _resident_kb(path) -> int:
    """Rss of this process's mappings of `path` (kB, /proc/self/smaps)."""
    real, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for ln in f:
            fields = ln.rstrip("\n").split(maxsplit=5)
            if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = len(fields) == 6 and fields[5] == real
            elif inside and ln.startswith("Rss:"):
                total += int(ln.split()[1])
    return total


def _open(path) -> ModelRuntime:
    return ModelRuntime.open(path, 1, inputs={"chips": (2, 150, 150, 3)}, outputs={"descriptor": (2, 128)})


def test_model_file_pages_are_dropped_after_the_first_invoke_and_outputs_hold(model_dir):
    path = need(model_dir / "dlib_resnet_v1_int8.tflite")
    size_kb = path.stat().st_size // 1024
    x = np.random.default_rng(5).uniform(0, 255, (2, 150, 150, 3)).astype(np.float32)
    rt = _open(path)
    before = _resident_kb(path)
    assert before > size_kb // 2, (before, size_kb)         # loading read the weights through the mapping
    first = rt.run(chips=x)["descriptor"]
    after = _resident_kb(path)
    assert after < size_kb // 10, (after, size_kb)          # dropped; a later page read brings it back
    for _ in range(3):                                      # the same bytes come back from the page cache
        assert np.array_equal(rt.run(chips=x)["descriptor"], first)
    assert _resident_kb(path) < size_kb // 10
    other = _open(path)                                     # and a fresh interpreter agrees bit for bit
    assert np.array_equal(other.run(chips=x)["descriptor"], first)
    rt.wipe()
    assert rt.holds_no_face()


def test_release_leaves_writable_mappings_and_unmapped_files_alone(tmp_path):
    p = tmp_path / "scratch.bin"
    p.write_bytes(b"\0" * mmap.PAGESIZE * 4)
    assert release_file_pages(p) == 0                       # not mapped
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        m[:5] = b"kept!"                                    # a private write: dropping the page would lose it
        assert release_file_pages(p) == 0
        assert m[:5] == b"kept!"
        m.close()
    with open(p, "rb") as f:                                # read-only: advised, content unchanged
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert m[0] == 0
        assert release_file_pages(p) == mmap.PAGESIZE * 4
        assert m[:5] == b"\0" * 5
        m.close()


SMAPS = """\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/lib/libcode.so
Rss:                 200 kB
Anonymous:             0 kB
00652000-00653000 r--p 00052000 08:02 173521      /usr/lib/libcode.so
Rss:                   4 kB
Anonymous:             4 kB
00653000-00654000 rw-p 00053000 08:02 173521      /usr/lib/libcode.so
Rss:                   4 kB
Anonymous:             0 kB
00e03000-00e24000 rw-p 00000000 00:00 0           [heap]
Rss:                 132 kB
Anonymous:           132 kB
7f0000000000-7f0000100000 r--s 00000000 08:02 99  /models/with space.tflite
Rss:                1024 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r--p 00000000 08:02 98  /usr/lib/no-anon-line.so
Rss:                  12 kB
"""


def test_only_clean_read_only_file_mappings_are_chosen():
    spans = clean_file_spans(SMAPS)
    # code: yes; relocated read-only data (a copy-on-write page), writable data, the heap, an anonymous
    # mapping, and a mapping whose Anonymous: line is missing (unknown): no
    assert spans == [(0x400000, 0x452000), (0x7F0000000000, 0x7F0000100000)]
    assert clean_file_spans(SMAPS, "/models/with space.tflite") == [(0x7F0000000000, 0x7F0000100000)]
    assert clean_file_spans(SMAPS, "/elsewhere") == []


def test_dropping_the_whole_process_start_up_pages_keeps_every_library_working(model_dir):
    """In a fresh process with the daemon's libraries and a real model: most file pages leave RSS, and
    OpenCV, numpy, LiteRT and SQLite give the same bytes afterwards."""
    import subprocess
    import sys
    from pathlib import Path
    model = need(model_dir / "face_landmark.tflite")
    code = f"""
import json, sqlite3, cv2, numpy as np
from device import memory
from device.vision.runtime import ModelRuntime
rt = ModelRuntime.open({str(model)!r}, 1, inputs={{"image": (1, 192, 192, 3)}},
                       outputs={{"landmarks": (1, 1404), "presence": (1, 1)}})
def work():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    warp = cv2.warpAffine(img, np.float32([[0.9, 0.1, 5], [-0.1, 0.9, 7]]), (192, 192))
    ok, jpg = cv2.imencode(".jpg", warp)
    lm = rt.run(image=warp[None].astype(np.float32) / 255)["landmarks"]
    db = sqlite3.connect(":memory:"); db.execute("create table t(x)"); db.execute("insert into t values (?)", (jpg.tobytes(),))
    return [warp.tobytes(), jpg.tobytes(), lm.tobytes(), (rng.random((64, 64)) @ rng.random((64, 64))).tobytes(),
            db.execute("select x from t").fetchone()[0]]
first = work()
before = memory.resident_file_mb()
advised = memory.release_file_pages()
after = memory.resident_file_mb()
print(json.dumps({{"before": before, "after": after, "advised": advised, "same": work() == first,
                  "again": memory.resident_file_mb()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    r = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert r["same"], r                                   # every library still computes the same bytes
    assert r["advised"] > 0
    assert r["after"] < 0.6 * r["before"], r              # import and set-up code left RSS
    assert r["again"] < r["before"], r                    # and the work brings back only what it uses
