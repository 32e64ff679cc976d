"""Synthetic presentation attacks built at test time from the shared genuine faces (nothing stored).

- `print_attack(rgb, n, fps)`: one genuine frame "printed" (tone loss: lower contrast, compressed
  gamut, desaturation, paper grain, slight blur), then held in front of the camera on a plane that
  turns about its vertical axis (up to `max_deg`, out and back, both ways) and bends (a cylinder
  whose curvature changes over time), in front of a plain office-like background. Returns
  [(t, rgb)].
- `screen_attack(frames)`: a genuine video composited onto a phone/tablet screen: scaled into a
  screen rectangle inside a black bezel held in a background scene, screen gamma, a moiré pattern
  (two slightly rotated pixel grids beating) and a reflection (a soft diagonal highlight). The
  timing of the source frames is kept. Returns [(t, rgb)].
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _background(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None]
    x = np.linspace(0, 1, w)[None, :]
    z = 0 * x + 0 * y
    base = np.stack([150 + 40 * y + 10 * x, 145 + 35 * y + z, 135 + 30 * y - 10 * x], -1)
    # a door/shelf edge so the background is not featureless
    base[:, int(0.12 * w):int(0.16 * w)] *= 0.6
    base += rng.normal(0, 3, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def print_tone(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Print-like tone loss: contrast and gamut compressed, desaturated, paper grain, slight blur."""
    rng = np.random.default_rng(seed)
    f = rgb.astype(np.float32) / 255.0
    grey = f.mean(-1, keepdims=True)
    f = grey + 0.6 * (f - grey)                      # desaturate
    f = 0.12 + 0.72 * f                              # ink black is grey, paper white is off-white
    f = f ** 1.15
    f += rng.normal(0, 0.02, f.shape[:2])[..., None]  # paper grain
    # halftone: the printer's dot screen (period ~3 px, 45 deg), visible as a fine periodic texture
    yy, xx = np.mgrid[0:f.shape[0], 0:f.shape[1]].astype(np.float32)
    dots = 0.5 + 0.5 * np.cos(2 * np.pi * (xx + yy) / 4.2) * np.cos(2 * np.pi * (xx - yy) / 4.2)
    f = f * (0.88 + 0.24 * dots[..., None])
    f = cv2.GaussianBlur(f, (0, 0), 0.8)
    f *= np.array([1.0, 0.98, 0.92], np.float32)     # warm paper
    return np.clip(f * 255, 0, 255).astype(np.uint8)


def _sheet_points(sw: int, sh: int, yaw_deg: float, bend: float, f_px: float, dist: float, u: np.ndarray):
    """Image x of the sheet's columns u (px from its left edge) and the vertical scale there, for a
    sheet of width sw turned by yaw about its vertical axis and bent into a cylinder (bend = the
    angle in radians that the half-width subtends; 0 = flat), seen by a pinhole camera of focal f_px
    at distance dist."""
    half = sw / 2
    uu = (u - half) / half                            # -1 .. 1
    if abs(bend) > 1e-6:
        R = half / bend
        th = uu * bend
        X, Z = R * np.sin(th), R * (1 - np.cos(th))
    else:
        X, Z = uu * half, np.zeros_like(uu)
    a = math.radians(yaw_deg)
    Xr = X * math.cos(a) + Z * math.sin(a)
    Zr = -X * math.sin(a) + Z * math.cos(a) + dist
    return f_px * Xr / Zr, f_px / Zr


def warp_sheet(img: np.ndarray, yaw_deg: float, bend: float, out_shape, scale: float = 0.8,
               bg: np.ndarray | None = None, strips: int = 24) -> np.ndarray:
    """Render the sheet `img` turned and bent into a frame of out_shape over bg: the cylinder is cut
    into `strips` vertical facets, each a plane mapped by its own homography (exact for a flat sheet)."""
    H, W = out_shape[:2]
    h, w = img.shape[:2]
    s = scale * min(H / h, W / w)
    sheet = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    sh, sw = sheet.shape[:2]
    f_px = 1.2 * W
    res = (_background(H, W) if bg is None else bg).copy()
    edges = np.linspace(0, sw, strips + 1)
    xs, ks = _sheet_points(sw, sh, yaw_deg, bend, f_px, f_px, edges)
    cx, cy = W / 2, H / 2
    for i in range(strips):
        u0, u1 = edges[i], edges[i + 1]
        src = np.float32([[u0, 0], [u1, 0], [u1, sh], [u0, sh]])
        dst = np.float32([[cx + xs[i], cy - ks[i] * sh / 2], [cx + xs[i + 1], cy - ks[i + 1] * sh / 2],
                          [cx + xs[i + 1], cy + ks[i + 1] * sh / 2], [cx + xs[i], cy + ks[i] * sh / 2]])
        M = cv2.getPerspectiveTransform(src, dst)
        x0 = int(max(0, np.floor(dst[:, 0].min()) - 1))
        x1 = int(min(W, np.ceil(dst[:, 0].max()) + 1))
        if x1 <= x0:
            continue
        T = np.array([[1, 0, -x0], [0, 1, 0], [0, 0, 1]], np.float64) @ M
        part = cv2.warpPerspective(sheet, T, (x1 - x0, H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.full((sh, sw), 255, np.uint8), T, (x1 - x0, H), flags=cv2.INTER_NEAREST)
        m = mask > 0
        res[:, x0:x1][m] = part[m]
    return res


def print_attack(rgb: np.ndarray, n: int = 60, fps: float = 15.0, max_deg: float = 35.0,
                 max_bend: float = 0.6, seed: int = 0) -> list[tuple[float, np.ndarray]]:
    """A printed copy of `rgb` waved in front of the camera: turns to +max_deg, back, to -max_deg,
    back, while bending; the hand shakes slightly (small translation)."""
    rng = np.random.default_rng(seed)
    paper = print_tone(rgb, seed)
    bg = _background(*rgb.shape[:2], seed=seed + 1)
    out = []
    for i in range(n):
        ph = 2 * math.pi * i / n
        yaw = max_deg * math.sin(ph)
        bend = max_bend * 0.5 * (1 - math.cos(2 * ph))   # radians over the half-width
        fr = warp_sheet(paper, yaw, bend, rgb.shape, bg=bg)
        dx, dy = rng.normal(0, 2, 2)
        M = np.float32([[1, 0, dx], [0, 1, dy]])
        fr = cv2.warpAffine(fr, M, (fr.shape[1], fr.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        out.append((i / fps, fr))
    return out


def screen_attack(frames, scale: float = 0.72, gamma: float = 1.25, moire: float = 0.08,
                  reflection: float = 0.15, seed: int = 0) -> list[tuple[float, np.ndarray]]:
    """frames: [(t, rgb)] of a genuine clip -> the same clip replayed on a screen held to the camera."""
    out = []
    t0, f0 = frames[0]
    H, W = f0.shape[:2]
    bg = _background(H, W, seed=seed + 2)
    sw, sh = int(W * scale), int(H * scale)
    bez = max(6, int(0.04 * W))
    x0, y0 = (W - sw) // 2, (H - sh) // 2
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    # moire: the screen's pixel grid beating against the camera's sampling grid
    a = math.radians(4.0)
    grid = (np.cos(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / 3.1) *
            np.cos(2 * math.pi * (yy * math.cos(a) - xx * math.sin(a)) / 3.3))
    beat = 0.5 + 0.5 * np.cos(2 * math.pi * (xx + 0.6 * yy) / 41.0)
    pattern = (1.0 + moire * grid * beat)[..., None]
    # a window's reflection: a soft bright diagonal band across the upper-left of the glass
    refl = np.clip(1 - np.abs((xx / sw + yy / sh) - 0.35) / 0.15, 0, 1)[..., None] * reflection
    for i, (t, rgb) in enumerate(frames):
        fr = bg.copy().astype(np.float32)
        fr[y0 - bez:y0 + sh + bez, x0 - bez:x0 + sw + bez] = 12.0          # black bezel
        scr = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        scr = scr ** gamma                                                   # screen gamma
        scr = scr * pattern
        scr = scr * 0.85 + 0.08 * np.array([0.9, 1.0, 1.15], np.float32)     # blue-ish backlight
        scr = scr * (1 - refl) + refl                                        # reflection
        fr[y0:y0 + sh, x0:x0 + sw] = np.clip(scr, 0, 1) * 255
        out.append((t, np.clip(fr, 0, 255).astype(np.uint8)))
    return out
