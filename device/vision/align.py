"""Face alignment: similarity transform (Umeyama) from 4 BlazeFace keypoints to the ArcFace 112x112 template.

BlazeFace keypoints: subject's right eye, left eye, nose tip, mouth centre (ears are not used).
The ArcFace template's mouth point is the midpoint of its two mouth corners (see MODELS.md).
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 112
# right eye, left eye, nose tip, mouth centre (midpoint of ArcFace's two mouth corners)
TEMPLATE = np.array([[38.2946, 51.6963],
                     [73.5318, 51.5014],
                     [56.0252, 71.7366],
                     [56.1396, 92.2848]], np.float64)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) src -> dst; returns 2x3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var_s = (s ** 2).sum() / n
    scale = (sig * np.diag(e)).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = t
    return m


def align_matrix(keypoints: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints, np.float64)
    if kp.shape[0] < 4 or kp.shape[-1] != 2:
        raise ValueError(f"expected (>=4, 2) keypoints, got {kp.shape}")
    return umeyama(kp[:4], TEMPLATE)


def align_face(rgb: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Warp the face to 112x112x3 uint8 RGB in the ArcFace template. Outside the frame is black."""
    m = align_matrix(keypoints)
    return cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
