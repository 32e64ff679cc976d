"""Optional clean-up of a decoded chip photo before its face is found and aligned (issue 18).

A chip photo is ~102x126 px squeezed into ~1 KB of JPEG: 8x8 blocking and ringing around the eyes
and mouth. `restore(rgb, method)` returns a new array (the input is left to its owner's wipe):
- "none": a copy;
- "bilateral": an edge-preserving smoothing of the block edges (cv2.bilateralFilter);
- "nlmeans": non-local means denoising (cv2.fastNlMeansDenoisingColored), stronger and slower.
Measured with `kyc-edge eval match --card-style --card-restore METHOD` (docs/match.md); not kept, so it
lives with the eval, not in the device runtime.
"""
from __future__ import annotations

import cv2
import numpy as np

METHODS = ("none", "bilateral", "nlmeans")


def restore(rgb: np.ndarray, method: str = "none") -> np.ndarray:
    if method == "none":
        return rgb.copy()
    if method == "bilateral":
        return cv2.bilateralFilter(rgb, 5, 20, 3)
    if method == "nlmeans":
        return cv2.fastNlMeansDenoisingColored(rgb, None, 5, 5, 5, 15)
    raise ValueError(f"unknown restore method {method!r} (one of {', '.join(METHODS)})")
