"""Covered lower face (a face mask, a scarf, a hand): the `face_covered` quality reason.

Works on the 112x112 ArcFace-aligned crop the quality gate already has, so it costs no model. The
skin chroma of the nose bridge (between the eyes, which a mask leaves free and hair does not cover)
is the customer's own reference, under whatever white balance the camera has; the lower face (mouth
and chin) is compared with it in YCrCb. A pixel stays skin-like when its chroma is within a box around
the reference that is wider towards red (lips) and takes any brightness (shadows, beards);
`covered_fraction` is the share of lower-face pixels outside it. A mask (surgical blue, white, black,
grey, pink) lands far outside; see `kyc-edge eval mask` (kyc_tools/eval/masks.py) for the rates.

Known limits: a mask close to the wearer's skin colour is not seen (`skin_beige` in the eval); a grey-
scale camera has no chroma, so nothing is flagged there (the match still decides: a covered face does
not match its card photo). FaceMesh usually rejects a masked face outright (presence ~0): the session
then runs this check on the detector's alignment of the face (suite.covered).
"""
from __future__ import annotations

import cv2
import numpy as np

# regions of the ArcFace template (eyes at y~51.6, nose tip ~71.7, mouth ~92.3)
_REF = (slice(42, 58), slice(50, 62))        # nose bridge, between the eyes
_LOWER = (slice(82, 106), slice(36, 76))      # mouth and chin

CR_BELOW, CR_ABOVE, CB_TOL = 10.0, 26.0, 16.0  # the skin-like box around the reference (8-bit units)
MIN_CHROMA = 6.0         # reference skin this close to grey (a grey-scale / IR camera): cannot tell


def covered_fraction(aligned: np.ndarray) -> float | None:
    """Share (0..1) of the lower face whose colour is unlike the nose bridge's skin; None = cannot tell."""
    ycc = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref_px = ycc[_REF].reshape(-1, 3)
    ref_px = ref_px[ref_px[:, 0] > 25]           # black border of a warp past the frame edge
    if len(ref_px) < 50:
        return None
    ref = np.median(ref_px, axis=0)
    if np.hypot(ref[1] - 128.0, ref[2] - 128.0) < MIN_CHROMA:
        return None
    low = ycc[_LOWER].reshape(-1, 3)
    dcr, dcb = low[:, 1] - ref[1], low[:, 2] - ref[2]
    skin = (dcr >= -CR_BELOW) & (dcr <= CR_ABOVE) & (np.abs(dcb) <= CB_TOL)
    return float((~skin).mean())


def lower_face_covered(aligned: np.ndarray, threshold: float) -> bool:
    f = covered_fraction(aligned)
    return f is not None and f >= threshold
