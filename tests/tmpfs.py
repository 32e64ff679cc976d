"""A real tmpfs for the full-disk and read-only tests (root only; in CI as root a failure is a failure)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str, *, mode: str = "0700", ro: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode={mode}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root in CI: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
