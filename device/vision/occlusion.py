"""Covered lower face (a face mask, a scarf, a hand): the `face_covered` quality reason.

Works on the 112x112 ArcFace-aligned crop the quality gate already has, so it costs no model. The
skin chroma of the nose bridge (between the eyes, which a mask leaves free and hair does not cover)
is the customer's own reference, under whatever white balance the camera has; the lower face (mouth
and chin) is compared with it in YCrCb. A pixel stays skin-like when its chroma is within a box around
the reference that is wider towards red (lips) and takes any brightness (shadows, beards);
`covered_fraction` is the share of lower-face pixels outside it. A mask (surgical blue, white, black,
grey, pink) lands far outside; see `kyc-edge eval mask` (kyc_tools/eval/masks.py) for the rates.

A second cue that is not colour: structure. A mouth and chin have edges across the face (lip line and
corners, nasolabial folds, the chin's contour); cloth over them has few, its pleats run along. So
`lower_texture` is the mean horizontal gradient (|d/dx| of the grey image, after a 1-px Gaussian) of
the mouth-and-chin region over that of the eyes-and-brows band, which a mask leaves free (the ratio
takes out the camera's sharpness and contrast). Below MIN_TEXTURE the lower face counts as covered
whatever its colour: this is what catches a skin-coloured mask. Tuned on the first 200 LFW dev faces of
`kyc-edge eval mask` (false alarms 0.5 %), confirmed on the next 200 (docs/liveness.md). Unmasked
real camera frames (blink video, head-pose clips, sessions-dev genuine: 2,104 tracked): none flagged.

A third cue joins the two: weak structure (lower_texture < WEAK_TEXTURE, 0.40) together with one flat
colour (lower_chroma_spread < MAX_CHROMA_SPREAD: the chroma barely varies over mouth and chin, where
lips would redden it) - a folded cloth mask, whose folds give it some structure but no lips. Neither
alone is safe (chroma spread alone: 2 % false alarms), together they keep the tuning half's 0.5 %.

Known limits: the masks of the eval are synthetic; a smooth one is trivially flat, so the eval also
draws `*_fabric` masks (folds, weave, grain), which this cue catches less often. A grey-scale camera
has no chroma, so only the texture cue works there. FaceMesh usually rejects a masked face outright
(presence ~0): the session then runs this check on the detector's alignment of the face (suite.covered).
"""
from __future__ import annotations

import cv2
import numpy as np

# regions of the ArcFace template (eyes at y~51.6, nose tip ~71.7, mouth ~92.3)
_REF = (slice(42, 58), slice(50, 62))        # nose bridge, between the eyes
_LOWER = (slice(82, 106), slice(36, 76))      # mouth and chin
_EYES = (slice(40, 62), slice(24, 88))        # eyes and brows: the texture reference a mask leaves free

# covered_fraction converts only rows _ROWS; the two regions relative to them
_ROWS = slice(_REF[0].start, _LOWER[0].stop)
_REF_R = (slice(_REF[0].start - _ROWS.start, _REF[0].stop - _ROWS.start), _REF[1])
_LOWER_R = (slice(_LOWER[0].start - _ROWS.start, _LOWER[0].stop - _ROWS.start), _LOWER[1])

# lower_texture filters only this window (rows, cols) around _EYES and _LOWER, plus a margin
_TEX_ROWS = (min(_EYES[0].start, _LOWER[0].start), max(_EYES[0].stop, _LOWER[0].stop))
_TEX_COLS = (min(_EYES[1].start, _LOWER[1].start), max(_EYES[1].stop, _LOWER[1].stop))
_TEX_MARGIN = 6

CR_BELOW, CR_ABOVE, CB_TOL = 10.0, 26.0, 16.0  # the skin-like box around the reference (8-bit units)
MIN_CHROMA = 6.0         # reference skin this close to grey (a grey-scale / IR camera): cannot tell
MIN_TEXTURE = 0.30       # lower_texture below this: covered (LFW dev faces: 1st percentile 0.35)
MIN_REF_TEXTURE = 4.0    # eyes band flatter than this (a blurred, dark or blank crop): cannot tell
# the third cue, both at once: weak structure (lower_texture < WEAK_TEXTURE) and one flat colour
# (lower_chroma_spread < MAX_CHROMA_SPREAD: no lips' red against the skin); a cloth mask with folds
WEAK_TEXTURE = 0.40
MAX_CHROMA_SPREAD = 5.0


def covered_fraction(aligned: np.ndarray) -> float | None:
    """Share (0..1) of the lower face whose colour is unlike the nose bridge's skin; None = cannot tell."""
    # only the rows the two regions use (a per-pixel conversion: the same values as converting it all)
    ycc = cv2.cvtColor(np.ascontiguousarray(aligned[_ROWS]), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref_px = ycc[_REF_R].reshape(-1, 3)
    ref_px = ref_px[ref_px[:, 0] > 25]           # black border of a warp past the frame edge
    if len(ref_px) < 50:
        return None
    ref = np.median(ref_px, axis=0)
    if np.hypot(ref[1] - 128.0, ref[2] - 128.0) < MIN_CHROMA:
        return None
    low = ycc[_LOWER_R].reshape(-1, 3)
    dcr, dcb = low[:, 1] - ref[1], low[:, 2] - ref[2]
    skin = (dcr >= -CR_BELOW) & (dcr <= CR_ABOVE) & (np.abs(dcb) <= CB_TOL)
    return float((~skin).mean())


def lower_texture(aligned: np.ndarray) -> float | None:
    """Horizontal-edge energy of mouth and chin over that of eyes and brows; None = cannot tell."""
    a = np.ascontiguousarray(aligned)
    if (a[_LOWER].max(axis=2) == 0).mean() > 0.1:      # the black border of a warp past the frame edge
        return None
    # filter only the window around both regions: the 1-px Gaussian (9 taps: 4 px each side) and the 3x3
    # Sobel reach 5 px, so a margin of _TEX_MARGIN keeps every value inside the regions as on the whole crop
    h, w = a.shape[:2]
    r0, r1 = max(0, _TEX_ROWS[0] - _TEX_MARGIN), min(h, _TEX_ROWS[1] + _TEX_MARGIN)
    c0, c1 = max(0, _TEX_COLS[0] - _TEX_MARGIN), min(w, _TEX_COLS[1] + _TEX_MARGIN)
    win = np.ascontiguousarray(a[r0:r1, c0:c1])
    grey = cv2.GaussianBlur(cv2.cvtColor(win, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3))
    ref = float(gx[_EYES[0].start - r0:_EYES[0].stop - r0, _EYES[1].start - c0:_EYES[1].stop - c0].mean())
    if ref < MIN_REF_TEXTURE:
        return None
    return float(gx[_LOWER[0].start - r0:_LOWER[0].stop - r0, _LOWER[1].start - c0:_LOWER[1].stop - c0].mean()) / ref


def lower_chroma_spread(aligned: np.ndarray) -> float:
    """Std of Cr plus std of Cb over mouth and chin after a 2-px Gaussian (grain out): lips make it
    large; one dyed cloth, however folded, keeps it small. Meaningless on a grey-scale camera (the
    caller checks covered_fraction is not None first)."""
    ycc = cv2.cvtColor(cv2.GaussianBlur(np.ascontiguousarray(aligned), (0, 0), 2.0),
                       cv2.COLOR_RGB2YCrCb).astype(np.float32)[_LOWER]
    return float(ycc[..., 1].std() + ycc[..., 2].std())


def cues(aligned: np.ndarray, threshold: float, min_texture: float = MIN_TEXTURE) -> dict:
    """Which cue says covered: `colour` (covered_fraction >= threshold), `structure` (lower_texture <
    min_texture), `flat` (lower_texture < WEAK_TEXTURE and lower_chroma_spread < MAX_CHROMA_SPREAD);
    `undecidable` when neither colour nor structure can be measured. min_texture 0: colour alone."""
    f = covered_fraction(aligned)
    t = lower_texture(aligned) if min_texture > 0 else None
    return {"colour": f is not None and f >= threshold,
            "structure": t is not None and t < min_texture,
            "flat": f is not None and t is not None and t < WEAK_TEXTURE
            and lower_chroma_spread(aligned) < MAX_CHROMA_SPREAD,
            "undecidable": f is None and t is None}


def lower_face_covered(aligned: np.ndarray, threshold: float, min_texture: float = MIN_TEXTURE) -> bool:
    """Covered when the lower face's colour is unlike the skin, or it lacks a mouth's structure, or it
    is one flat colour with weak structure (`cues`); min_texture 0 leaves the colour cue alone."""
    c = cues(aligned, threshold, min_texture)
    return c["colour"] or c["structure"] or c["flat"]
