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
