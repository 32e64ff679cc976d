"""kyc_tools.eval.pad_motion (an evaluated, not shipped, video-level candidate): phase correlation sees a
face that moves against a still background, and a rigid plane (a photo) that moves as one."""
from __future__ import annotations

import numpy as np

from kyc_tools.eval.pad_motion import pair_motion

BOX = (120.0, 70.0, 200.0, 150.0)       # an 80 px face in a 320x240 frame


def scene(seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(128, 40, (240, 320)).astype(np.float32)
    k = np.ones(5, np.float32) / 5           # some spatial correlation, like a real picture
    g = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, g)
    return np.apply_along_axis(lambda c: np.convolve(c, k, "same"), 0, g).astype(np.float32)


def test_a_face_moving_on_a_still_background_and_a_rigid_shift():
    g0 = scene()
    live = g0.copy()
    x0, y0, x1, y1 = (int(v) for v in BOX)
    live[y0:y1, x0:x1] = np.roll(g0, (0, 4), axis=(0, 1))[y0:y1, x0:x1]     # the face moved 4 px, the room did not
    f, b = pair_motion(g0, live, BOX)
    assert f > 3.0 / 80 and b < 0.5 / 80, (f, b)
    photo = np.roll(g0, (3, 0), axis=(0, 1))                                # everything moved 3 px together
    f, b = pair_motion(g0, photo, BOX)
    assert abs(f - b) < 1.0 / 80 and f > 2.0 / 80, (f, b)
    f, b = pair_motion(g0, g0.copy(), BOX)                                  # a photo on a fixed support
    assert f < 0.2 / 80 and b < 0.2 / 80, (f, b)
