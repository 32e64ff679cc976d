"""Spoken prompts, rendered once at setup with espeak-ng (Debian package `espeak-ng`): Mandarin
(`cmn`) and English (`en`) voices, one WAV per prompt in <dir>/<lang>/<key>.wav, the same texts the
screens show (static/texts.json). The page plays each once when its screen appears."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from device.display.server import STATIC

VOICES = {"zh": "cmn", "en": "en-gb"}


def texts() -> dict:
    return json.loads((STATIC / "texts.json").read_text(encoding="utf-8"))


def render(out: Path, espeak: str | None = None, *, speed: int = 150) -> list[Path]:
    exe = espeak or shutil.which("espeak-ng")
    if not exe:
        raise RuntimeError("espeak-ng is not installed (scripts/setup installs it: apt-get install espeak-ng)")
    t = texts()
    made = []
    for lang, voice in VOICES.items():
        d = Path(out) / lang
        d.mkdir(parents=True, exist_ok=True)
        for key in t["spoken"]:
            f = d / f"{key}.wav"
            subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(f), t[lang][key]],
                           check=True, capture_output=True, timeout=60)
            made.append(f)
    return made
