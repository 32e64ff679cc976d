"""A masked customer: the session hints "please take off your face mask" and ends with face_covered;
a masked face never reaches the match. Real models, real frames (the blink video with a synthetic mask
drawn over the lower face of every frame, written to the test's temp dir only)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device import config as C
from device.offline import fabricated_card, run_offline
from device.vision.occlusion import covered_fraction
from kyc_tools.eval.masks import MASK_COLOURS, draw_mask
from tests.faces import BLINK_VIDEO, genuine_photo


def _masked_video(src: Path, out: Path, detector, colour, frames: int = 200) -> Path:
    cap = cv2.VideoCapture(str(src))
    kp = None
    out.mkdir()
    try:
        for i in range(frames):
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            faces = detector.detect(rgb).faces
            if faces:
                kp = max(faces, key=lambda f: f.score).keypoints
            if kp is not None:
                rgb = draw_mask(rgb, kp, colour, seed=i)
            cv2.imwrite(str(out / f"{i:05d}.jpg"), rgb[:, :, ::-1])
    finally:
        cap.release()
    return out


@pytest.fixture(scope="module")
def suite(model_dir):
    from device.vision.suite import VisionSuite
    return VisionSuite.create(C.replace(C.from_dict({}), **{"models.dir": str(model_dir)}), model_dir)


@pytest.mark.parametrize("colour", ["surgical_blue"])
def test_a_masked_face_is_told_and_fails_face_covered(shared_data, model_dir, suite, tmp_path, colour):
    video = _masked_video(shared_data / BLINK_VIDEO, tmp_path / "masked", suite.detector, MASK_COLOURS[colour])
    cfg = C.replace(C.from_dict({}), **{
        "camera.backend": "replay", "camera.replay.path": str(video), "camera.replay.pace": "fast",
        "camera.replay.loop": False, "camera.replay.fps": 30.0, "camera.stall_s": 30.0, "camera.lost_s": 60.0,
        "models.dir": str(model_dir)})
    events = []
    v = run_offline(cfg, fabricated_card(genuine_photo(shared_data)), ["blink"], vision=suite, events=events.append)
    hints = [e["prompt"] for e in events if e["event"] == "hint"]
    assert "take_off_mask" in hints, (hints, v["reasons"])
    assert v["result"] == "fail" and "face_covered" in v["reasons"], v
    # the verdict is the session's last word (no silent stall): the verdict event follows the hint
    kinds = [e["event"] for e in events]
    assert kinds.index("hint") < kinds.index("verdict")


def test_the_same_video_unmasked_passes_and_is_not_flagged(shared_data, model_dir, suite):
    cfg = C.replace(C.from_dict({}), **{
        "camera.backend": "replay", "camera.replay.path": str(shared_data / BLINK_VIDEO),
        "camera.replay.pace": "fast", "camera.replay.loop": False, "camera.stall_s": 30.0, "camera.lost_s": 60.0,
        "models.dir": str(model_dir)})
    events = []
    v = run_offline(cfg, fabricated_card(genuine_photo(shared_data)), ["blink"], vision=suite, events=events.append)
    assert v["result"] == "pass", v
    assert "take_off_mask" not in [e.get("prompt") for e in events]


def test_covered_fraction_separates_a_drawn_mask(shared_data, suite):
    from tests.faces import impostor_photo
    from device.vision.align import align_face
    rgb = impostor_photo(shared_data)
    f = max(suite.detector.detect(rgb).faces, key=lambda f: f.score)
    plain = covered_fraction(align_face(rgb, f.keypoints))
    masked = draw_mask(rgb, f.keypoints, MASK_COLOURS["white"])
    f2 = max(suite.detector.detect(masked).faces, key=lambda f: f.score)
    covered = covered_fraction(align_face(masked, f2.keypoints))
    assert plain is not None and covered is not None
    assert plain < 0.3 and covered > 0.9, (plain, covered)


def test_a_skin_coloured_mask_is_caught_by_structure_not_colour(shared_data, suite):
    """skin_beige is close to the skin's chroma (the colour cue misses it); the mouth-and-chin structure
    cue (occlusion.lower_texture) sees that there is no mouth; the unmasked face has one."""
    from tests.faces import impostor_photo
    from device.vision.align import align_face
    from device.vision.occlusion import MIN_TEXTURE, lower_face_covered, lower_texture
    rgb = impostor_photo(shared_data)
    f = max(suite.detector.detect(rgb).faces, key=lambda f: f.score)
    plain = align_face(rgb, f.keypoints)
    masked_rgb = draw_mask(rgb, f.keypoints, MASK_COLOURS["skin_beige"])
    g = max(suite.detector.detect(masked_rgb).faces, key=lambda f: f.score)
    masked = align_face(masked_rgb, g.keypoints)
    assert covered_fraction(masked) < 0.9                  # colour alone: not covered
    assert lower_texture(masked) < MIN_TEXTURE < lower_texture(plain)
    assert lower_face_covered(masked, 0.9) and not lower_face_covered(plain, 0.9)
    assert not lower_face_covered(masked, 0.9, min_texture=0.0)    # the texture cue off: missed again


def test_eval_mask_reports_each_cue_and_how_missed_masks_match(shared_data, model_dir):
    """`kyc-edge eval mask` on a few faces: both cues reported per mask, the fabric variants drawn, and
    the matched-pair part accounts for every masked attempt (no mesh, flagged, or missed -> scored)."""
    from kyc_tools.eval.masks import FABRIC_MASKS, evaluate
    out = evaluate(shared_data, model_dir, limit=8, pairs=4)
    assert set(MASK_COLOURS) | set(FABRIC_MASKS) == set(out["per_mask"])
    beige = out["per_mask"]["skin_beige"]
    assert beige["covered_rate_structure_cue"] > beige["covered_rate_colour_cue"], beige
    assert out["match_pairs"] == 4 and "missed_masks_match_rate" in out
    for name, c in out["match_per_mask"].items():
        assert c["found"] == c["no_mesh"] + c["flagged"] + c["missed"] and c["missed_match"] <= c["missed"], (name, c)
    assert out["match_per_mask"]["unmasked"]["missed_match"] >= 3      # genuine pairs, no mask: they match
    colour_only = evaluate(shared_data, model_dir, limit=8, pairs=0, min_texture=0.0)
    assert colour_only["per_mask"]["skin_beige"]["covered_rate_structure_cue"] == 0.0
    assert colour_only["per_mask"]["skin_beige"]["covered_rate_flat_cue"] == 0.0
