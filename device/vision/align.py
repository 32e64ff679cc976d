"""Face alignment: similarity transform (Umeyama) onto the ArcFace 112x112 template.

Two sources of points, same template:
- FaceMesh landmarks (preferred; the tracker computes them on every live frame, and the card photo
  gets one FaceMesh pass): 5 points, the centres of both eye contours, the nose tip and both mouth
  corners, onto ArcFace's 5-point template scaled by 0.97. On LFW folds 1-5 this lifts card-style TAR@FAR=1e-3
  from 0.912 to 0.956 (docs/match.md).
- BlazeFace keypoints (fallback, when FaceMesh found no face): subject's right eye, left eye, nose
  tip, mouth centre (ears are not used); the template's mouth point is the midpoint of its corners.
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


# ArcFace 5 points: right eye, left eye, nose tip, right mouth corner, left mouth corner (image left first)
TEMPLATE5 = np.array([[38.2946, 51.6963],
                      [73.5318, 51.5014],
                      [56.0252, 71.7366],
                      [41.5493, 92.3655],
                      [70.7299, 92.2041]], np.float64)
# The template FaceMesh's points are fitted to: ArcFace's, shrunk 3 % about its centroid (a little more
# context round the face). FaceMesh's eye-contour centres and outer mouth corners are not the points the
# embedder's training crops were aligned on; on LFW folds 1-3 scales 0.92-1.00 were measured, 0.97 was
# best on plain and card-style pairs together, for float and int8 MobileFaceNet alike (docs/match.md).
MESH_TEMPLATE_SCALE = 0.97
TEMPLATE5_MESH = (TEMPLATE5 - TEMPLATE5.mean(0)) * MESH_TEMPLATE_SCALE + TEMPLATE5.mean(0)
# FaceMesh indices: the contour of each eye (its mean is the eye centre), nose tip, mouth corners
MESH_R_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
MESH_L_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
MESH_NOSE_TIP, MESH_MOUTH_R, MESH_MOUTH_L = 1, 61, 291
_MESH5_IDX = np.array(MESH_R_EYE + MESH_L_EYE + (MESH_NOSE_TIP, MESH_MOUTH_R, MESH_MOUTH_L))


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


def mesh_points(landmarks: np.ndarray) -> np.ndarray:
    """(468, 2|3) FaceMesh landmarks in frame pixels -> the 5 ArcFace points (5, 2)."""
    lm = np.asarray(landmarks)
    if lm.shape[0] != 468:
        raise ValueError(f"expected 468 FaceMesh landmarks, got {lm.shape}")
    # the 36 points used, as float64 (not all 468 converted first; the conversion is exact either way)
    p = lm[_MESH5_IDX, :2].astype(np.float64)
    n_r, n_l = len(MESH_R_EYE), len(MESH_L_EYE)
    return np.stack([p[:n_r].mean(0), p[n_r:n_r + n_l].mean(0), p[-3], p[-2], p[-1]])


def align_on_mesh(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp the face to 112x112x3 uint8 RGB on the 5-point template (TEMPLATE5_MESH) from FaceMesh landmarks."""
    m = umeyama(mesh_points(landmarks), TEMPLATE5_MESH)
    return cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
