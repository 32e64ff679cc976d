"""The session state machine on real models and real frames, offline (replay camera, fast pace)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device import config as C
from device.cardreader.reader import CardRead
from device.cardreader.records import parse_text
from device.cardreader.simulator import FakeCard
from device.offline import fabricated_card, run_offline
from device.vision.suite import VisionSuite
from tests.faces import BLINK_VIDEO, genuine_photo, impostor_photo

REPO = Path(__file__).resolve().parents[1]


def cfg_for(video: Path, model_dir: Path, **changes) -> C.Config:
    cfg = C.replace(C.from_dict({}), **{
        "camera.backend": "replay", "camera.replay.path": str(video), "camera.replay.pace": "fast",
        "camera.replay.loop": False, "camera.stall_s": 30.0, "camera.lost_s": 60.0, "models.dir": str(model_dir)})
    return C.replace(cfg, **changes) if changes else cfg


@pytest.fixture(scope="module")
def suite(model_dir):
    return VisionSuite.create(C.replace(C.from_dict({}), **{"models.dir": str(model_dir)}), model_dir)


def card_with(record_card: FakeCard, photo: np.ndarray) -> CardRead:
    return CardRead(record=parse_text(record_card.text), photo=photo.copy())


def test_genuine_passes_and_everything_is_wiped(shared_data, model_dir, suite):
    cfg = cfg_for(shared_data / BLINK_VIDEO, model_dir)
    card = fabricated_card(genuine_photo(shared_data))
    photo = card.photo
    events = []
    v = run_offline(cfg, card, ["blink"], vision=suite, events=events.append)
    assert v["result"] == "pass", v
    assert v["scores"]["similarity"] >= cfg.match.threshold
    assert v["card"] == {"type": "resident", "expired": False}
    assert not photo.any(), "the card photo buffer must be zero-filled after the session"
    assert card.record.wiped
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["card_detected", "card_read"] and "verdict" in kinds
    assert {"event": "challenge", "prompt": "blink"}.items() <= next(e for e in events if e["event"] == "challenge").items()
    assert all(e["session_id"] == v["verdict_id"] for e in events)


def test_impostor_fails_face_mismatch(shared_data, model_dir, suite):
    cfg = cfg_for(shared_data / BLINK_VIDEO, model_dir)
    v = run_offline(cfg, fabricated_card(impostor_photo(shared_data)), ["blink"], vision=suite)
    assert v["result"] == "fail" and "face_mismatch" in v["reasons"]
    assert v["scores"]["similarity"] < cfg.match.threshold


@pytest.mark.parametrize("fake, reason", [
    (FakeCard.resident(valid_to="20200101"), "card_expired"),
    (FakeCard.resident(number="990101199001011234"), "card_invalid_number"),
    # a residence permit ('J') with a wrong GB 11643 check digit (the right one ends in 0)
    (FakeCard.permit_hmt(number="810002198505050021"), "card_invalid_number"),
    # a foreign card whose number does not start with its nationality code
    (FakeCard.foreign(number="AAA000000000003"), "card_invalid_number"),
    (FakeCard.permit_hmt(valid_to="20200101"), "card_expired"),
])
def test_card_problems_have_their_reason(shared_data, model_dir, suite, fake, reason):
    cfg = cfg_for(shared_data / BLINK_VIDEO, model_dir)
    v = run_offline(cfg, card_with(fake, genuine_photo(shared_data)), ["blink"], vision=suite)
    assert v["result"] == "fail" and v["reasons"] == [reason]


def test_card_photo_without_face(shared_data, model_dir, suite):
    cfg = cfg_for(shared_data / BLINK_VIDEO, model_dir)
    blank = np.full((126, 102, 3), 200, np.uint8)
    v = run_offline(cfg, fabricated_card(blank), ["blink"], vision=suite)
    assert v["reasons"] == ["card_photo_no_face"]


def test_two_people_in_view_is_multiple_faces(shared_data, model_dir, suite):
    clip = shared_data / "headpose" / "head-pose-face-detection-female-and-male"
    cfg = cfg_for(clip, model_dir)
    v = run_offline(cfg, fabricated_card(genuine_photo(shared_data)), ["blink"], vision=suite)
    assert v["result"] == "fail" and v["reasons"][0] == "multiple_faces"


def test_no_face_in_view(shared_data, model_dir, suite, tmp_path):
    import cv2
    folder = tmp_path / "empty"
    folder.mkdir()
    for i in range(40):   # synthetic empty counter: no face at all
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((240, 320, 3), 90 + i, np.uint8))
    cfg = cfg_for(folder, model_dir, **{"camera.replay.fps": 10.0, "session.face_wait_s": 2.0})
    v = run_offline(cfg, fabricated_card(genuine_photo(shared_data)), ["blink"], vision=suite)
    assert v["reasons"] == ["no_face"]


def test_verify_cli_exit_codes(shared_data, tmp_path):
    import cv2
    card = tmp_path / "card.jpg"
    cv2.imwrite(str(card), genuine_photo(shared_data)[:, :, ::-1])
    video = str(shared_data / BLINK_VIDEO)
    run = lambda *a: subprocess.run([sys.executable, "-m", "device.cli", "verify", *a], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    r = run("--card-photo", str(card), "--video", video, "--challenges", "blink", "--card-style")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["result"] == "pass"
    r = run("--card-photo", str(shared_data / "lfw-dev/images/Aaron_Sorkin_0001.jpg"), "--video", video,
            "--challenges", "blink")
    assert r.returncode == 1 and "face_mismatch" in json.loads(r.stdout)["reasons"]
    r = run("--card-photo", str(card), "--video", str(tmp_path / "nope.mp4"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run("--card-photo", str(card), "--video", video, "--challenges", "juggle")
    assert r.returncode == 2 and "expected names" in r.stderr
