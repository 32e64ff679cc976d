"""Covered lower face (a face mask, a scarf, a hand): the `face_covered` quality reason.

Works on the 112x112 ArcFace-aligned crop the quality gate already has, so it costs no model: the
skin chroma of the upper face (forehead and nose bridge, which a mask leaves free) is the customer's
own reference, and the lower face (mouth and chin) is compared with it in YCrCb. A mask (surgical
blue, white, black, grey, patterned) has a chroma far from the skin's; lips and a shadowed chin stay
close. `covered_fraction` is the share of lower-face pixels that are NOT skin-like.

Limits (docs and README, measured by kyc_tools/eval/mask_eval.py): a mask whose colour is close to
the wearer's skin is not seen; a grey-scale camera has no chroma, so nothing is flagged there (the
match then decides, and a covered face does not match a card photo).
"""
from __future__ import annotations

import cv2
import numpy as np

# regions of the ArcFace template (eyes at y~51.6, nose tip ~71.7, mouth ~92.3)
_UPPER = ((slice(22, 36), slice(40, 72)),     # forehead, above the brows
          (slice(42, 58), slice(50, 62)))     # nose bridge, between the eyes
_LOWER = (slice(82, 106), slice(36, 76))      # mouth and chin

CHROMA_TOL = 12.0        # CrCb distance (8-bit units) within which a pixel counts as skin-like
MIN_CHROMA = 6.0         # reference skin this close to grey (a grey-scale / IR camera): cannot tell


def covered_fraction(aligned: np.ndarray) -> float | None:
    """Share (0..1) of the lower face whose colour is unlike the upper face's skin; None = cannot tell."""
    ycc = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref_px = np.concatenate([ycc[r, c].reshape(-1, 3) for r, c in _UPPER])
    ref_px = ref_px[ref_px[:, 0] > 25]           # black border of a warp past the frame edge
    if len(ref_px) < 50:
        return None
    ref = np.median(ref_px[:, 1:], axis=0)
    if np.hypot(ref[0] - 128.0, ref[1] - 128.0) < MIN_CHROMA:
        return None
    low = ycc[_LOWER].reshape(-1, 3)
    d = np.hypot(low[:, 1] - ref[0], low[:, 2] - ref[1])
    # very dark or very bright lower pixels (a black or a white mask) also count as not skin
    y_ref = float(np.median(ref_px[:, 0]))
    dy = np.abs(low[:, 0] - y_ref)
    # skin-like: near this customer's own skin, or inside the generic skin-chroma box (Chai & Ngan:
    # Cr 133..173, Cb 77..127), which keeps beards, lips and shadows skin-like
    in_box = (low[:, 1] >= 133) & (low[:, 1] <= 173) & (low[:, 2] >= 77) & (low[:, 2] <= 127)
    unlike = ~((d <= CHROMA_TOL) | in_box) | (dy > 90.0)
    return float(unlike.mean())


def lower_face_covered(aligned: np.ndarray, threshold: float) -> bool:
    f = covered_fraction(aligned)
    return f is not None and f >= threshold
