"""Faces for tests, read from ../shared/data at test time (never stored in the repo)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BLINK_VIDEO = "blink/demo_old.mp4"
IMPOSTOR = "lfw-dev/images/Aaron_Sorkin_0001.jpg"


def video_frame(path: Path, index: int) -> np.ndarray:
    from device.camera.replay import decode_video
    got = list(decode_video(path, limit=index + 1))
    if len(got) < index + 1:
        raise RuntimeError(f"{path} has fewer than {index + 1} frames")
    return got[index][0]


def genuine_photo(shared_data: Path) -> np.ndarray:
    """A head-and-shoulders crop of the blink video's subject (a frame outside the closures)."""
    rgb = video_frame(shared_data / BLINK_VIDEO, 60)
    return np.ascontiguousarray(rgb[180:620, 470:830])


def impostor_photo(shared_data: Path) -> np.ndarray:
    bgr = cv2.imread(str(shared_data / IMPOSTOR))
    return np.ascontiguousarray(bgr[:, :, ::-1])


def chip_jpeg(rgb: np.ndarray) -> bytes:
    """The card chip's photo: 102x126, at most 1,024 bytes (the reader protocol's photo field)."""
    from device.cardreader.photo import card_photo_jpeg
    return card_photo_jpeg(rgb)


def with_second_face(shared_data: Path, out: Path, spell: range | None, limit: int = 180) -> Path:
    """The blink video's frames as images in `out`, with a second real person (the LFW impostor, at
    the subject's face size, left of the subject) pasted into the frames whose index is in `spell`
    (None: in none). For the one-face rule on real models and real frames; files stay in tmp."""
    from device.camera.replay import decode_video
    other = cv2.resize(impostor_photo(shared_data), (500, 500), interpolation=cv2.INTER_CUBIC)
    out.mkdir(parents=True, exist_ok=True)
    for i, (rgb, _t) in enumerate(decode_video(shared_data / BLINK_VIDEO, limit=limit)):
        if spell is not None and i in spell:
            rgb = rgb.copy()
            rgb[110:610, 0:500] = other
        cv2.imwrite(str(out / f"{i:04d}.jpg"), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return out
