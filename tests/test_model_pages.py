"""The runtime drops a model file's resident pages after the first invoke (device/vision/runtime.py
release_file_pages): on the real models, the mapped file stops counting in RSS, the outputs do not change,
and a writable mapping is never touched."""
from __future__ import annotations

import mmap
import os

import numpy as np

from device.vision.runtime import ModelRuntime, release_file_pages
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
