"""Privacy proof: many full sessions through the real daemon, then every MQTT payload (wildcard
subscriber), every log line, and every file the daemon wrote (state dir, its TMPDIR) is scanned for
image bytes, long float arrays, and the fabricated cards' names and numbers. Zero hits allowed.

The daemon runs with TMPDIR pointed at a directory this test owns (as systemd's PrivateTmp= gives it
its own /tmp), so "files under /tmp" means exactly the files the daemon wrote there.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from device.cardreader.simulator import Fault, FakeCard, Simulator
from tests.daemon_harness import NotifySocket, Subscriber, daemon_config, start_daemon, stop_daemon, write_config
from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo, impostor_photo
from tests.privacy_scan import assert_clean, scan_dirs, scan_mqtt, scan_text


def _pii(card: FakeCard) -> list[str]:
    """Every personal string the card's text block holds, plus their JSON-escaped forms."""
    from device.cardreader.records import parse_text
    from device.errors import CardError
    try:
        rec = parse_text(card.text)
    except CardError:   # an unsupported type mark: read the same bytes with the resident layout
        t = bytearray(card.text)
        t[248:250] = " ".encode("utf-16-le")
        rec = parse_text(bytes(t))
    out = []
    for name in ("name", "number", "address", "name_en", "pass_number", "birth"):
        try:
            v = rec.field(name)
        except (KeyError, AttributeError, ValueError):
            continue
        v = v.strip()
        if v and len(v) >= 3:
            out += [v, json.dumps(v)[1:-1]]
    return list(dict.fromkeys(out))


def _run_daemon(tmp, broker, sim, video, model_dir, name, cards, challenges=("blink",)):
    """Start a daemon, run each card as a session, stop it. Returns (verdicts, log text, dirs)."""
    dtmp = tmp / f"{name}-tmp"
    dtmp.mkdir()
    cfg = daemon_config(tmp / name, broker_url=broker.url, reader_port=sim.port, video=str(video),
                        model_dir=model_dir, challenges=challenges,
                        extra={"liveness": {"challenge_timeout_s": 4.0}, "log": {"level": "debug"}})
    (tmp / name).mkdir()
    notify = NotifySocket(tmp / f"{name}.sock")
    log_path = tmp / f"{name}.log"
    env_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(dtmp)
    try:
        proc = start_daemon(write_config(tmp / f"{name}.toml", cfg), notify, log_path=log_path)
    finally:
        if env_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = env_tmp
    sub = Subscriber(broker.url, "kyc/v1/+/+/verdict")
    verdicts = []
    try:
        assert notify.wait_for("READY=1", 40), log_path.read_text()[-2000:]
        for card, fault in cards:
            if fault:
                sim.add_fault(fault)
            n = len(sub.verdicts())
            sim.insert(card)
            got = sub.wait_verdicts(n + 1, 30)
            sim.remove()
            assert len(got) > n, f"no verdict for {card!r}: " + log_path.read_text()[-2000:]
            verdicts.append(got[n]["verdict"])
            time.sleep(0.4)
    finally:
        stop_daemon(proc)
        sub.close()
        notify.close()
    return verdicts, log_path.read_text(), [tmp / name / "state", dtmp]


def test_no_biometric_or_personal_data_leaves_any_session(tmp_path, broker, shared_data, model_dir):
    wire = Subscriber(broker.url, "#")      # everything on the broker, every topic
    sim = Simulator(card=None)
    sim.start_pty()
    g_jpeg = chip_jpeg(genuine_photo(shared_data))
    i_jpeg = chip_jpeg(impostor_photo(shared_data))
    genuine_cards = [
        (FakeCard.resident(photo_bytes=g_jpeg), None),
        (FakeCard.resident(photo_bytes=i_jpeg, seed=7), None),                      # impostor
        (FakeCard.permit_hmt(photo_bytes=g_jpeg), None),
        (FakeCard.foreign(photo_bytes=g_jpeg), None),
        (FakeCard.resident(photo_bytes=g_jpeg, valid_to="20200101", seed=11), None),  # expired
        (FakeCard.resident(photo_bytes=g_jpeg, number="990101199001011234"), None),   # bad check digit
        (FakeCard.unsupported(photo_bytes=g_jpeg), None),
        (FakeCard.resident(photo_bytes=g_jpeg, seed=13), Fault("card_removed")),      # pulled mid-read
    ]
    # print attack: a NUAA printed-photo sequence as the camera, the genuine card on the reader
    nuaa = shared_data / "nuaa-train"
    rows = [l.split(",") for l in (nuaa / "labels.csv").read_text().splitlines()[1:]]
    seq = sorted((r for r in rows if r[1] == "print" and r[2] == "0001" and r[5] == "01"),
                 key=lambda r: int(r[6]))
    attack_dir = tmp_path / "attack-frames"
    attack_dir.mkdir()
    for k, r in enumerate(seq):
        shutil.copy(nuaa / r[0], attack_dir / f"{k:04d}.jpg")
    spoof_cards = [(FakeCard.resident(photo_bytes=chip_jpeg(np.asarray(
        __import__("cv2").imread(str(nuaa / seq[0][0]))[:, :, ::-1]).copy()), seed=21), None)]
    try:
        v1, log1, dirs1 = _run_daemon(tmp_path, broker, sim, shared_data / BLINK_VIDEO, model_dir, "counter",
                                      genuine_cards)
        v2, log2, dirs2 = _run_daemon(tmp_path, broker, sim, attack_dir, model_dir, "attack", spoof_cards)
    finally:
        sim.stop()
    time.sleep(0.5)
    wire.close()

    # the sessions really ran and covered every outcome the scan is meant to see
    results = [(v["result"], v["reasons"][:1]) for v in v1 + v2]
    assert results[0] == ("pass", []) and results[1] == ("fail", ["face_mismatch"])
    assert results[2][0] == "pass" and results[3][0] == "pass"
    assert results[4][1] == ["card_expired"] and results[5][1] == ["card_invalid_number"]
    assert results[6][1] == ["unsupported_card_type"]
    assert results[7][0] == "fail"
    assert v2[0]["result"] == "fail", "a printed photo must not pass"
    assert len(wire.messages) > 20

    forbidden = sorted({s for card, _ in genuine_cards + spoof_cards for s in _pii(card)})
    assert len(forbidden) >= 10
    assert_clean(scan_mqtt(wire.messages, forbidden), "MQTT payloads")
    assert_clean(scan_text(log1 + log2, forbidden), "daemon logs")
    written = [p for d in dirs1 + dirs2 for p in d.rglob("*") if p.is_file()]
    assert any(p.name.startswith("outbox") for p in written), "the outbox should exist and be scanned"
    assert_clean(scan_dirs(dirs1 + dirs2, forbidden), "files the daemon wrote")


def test_session_objects_hold_nothing_biometric_after_the_wipe(shared_data, model_dir):
    """After run(): no frame, crop, photo or embedding is reachable from the session or the suite."""
    from device import config as C
    from device.offline import fabricated_card, run_offline
    from device.vision.suite import VisionSuite
    cfg = C.replace(C.from_dict({}), **{
        "camera.backend": "replay", "camera.replay.path": str(shared_data / BLINK_VIDEO),
        "camera.replay.pace": "fast", "camera.replay.loop": False, "models.dir": str(model_dir)})
    suite = VisionSuite.create(cfg, model_dir)
    card = fabricated_card(genuine_photo(shared_data))
    v = run_offline(cfg, card, ["blink"], vision=suite)
    assert v["result"] == "pass"
    assert not card.photo.any() and card.record.wiped

    def arrays(obj, seen, depth=0):
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield obj
        elif isinstance(obj, dict):
            for x in obj.values():
                yield from arrays(x, seen, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for x in obj:
                yield from arrays(x, seen, depth + 1)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("device"):
            for x in vars(obj).values():
                yield from arrays(x, seen, depth + 1)

    # every numpy buffer the suite's own objects hold (tracker, detector, embedder, landmark, iris and
    # PAD models): none may still hold image-sized or embedding-sized content after the session
    def biometric(a):
        if not a.any():
            return False
        if a.dtype == np.uint8:
            return a.size >= 32 * 32 * 3                       # an image or crop
        if a.dtype in (np.float32, np.float64):
            return a.size >= 32 * 32 * 3 or a.shape[-1:] in ((128,), (192,))   # a tensor or an embedding
        return False
    held = [(a.dtype.name, a.shape) for a in arrays(suite, set()) if biometric(a)]
    assert held == [], f"buffers with content survive the session: {held}"
    # the interpreters' own tensors: inputs (the last crop each model saw) zero-filled, outputs (the last
    # embedding, landmarks) and intermediates overwritten by one run on the zero input
    rts = suite.runtimes
    assert len(rts) >= 6, rts          # detector, FaceMesh, iris, 2 x PAD, embedder
    assert all(rt.holds_no_face() for rt in rts), [rt for rt in rts if not rt.holds_no_face()]


def test_the_interpreter_input_check_can_fail(model_dir):
    """inputs_are_zero() sees a crop left in an input tensor, and wipe() clears it."""
    from device.vision.runtime import ModelRuntime
    rt = ModelRuntime.open(model_dir / "face_detection_short_range.tflite", 1,
                           inputs={"image": (1, 128, 128, 3)}, outputs={"r": (1, 896, 16), "s": (1, 896, 1)})
    rt.set("image", np.full((1, 128, 128, 3), 0.5, np.float32))
    rt.invoke()
    assert not rt.inputs_are_zero()
    rt.wipe()
    assert rt.inputs_are_zero()


def test_the_last_embedding_does_not_survive_in_the_interpreter(model_dir, shared_data):
    """The embedder's output tensor held the last face's embedding after a session (only inputs were
    wiped); wipe() now runs the zero input once, and holds_no_face() sees an output left behind."""
    from device.vision.align import align_face
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    from tests.faces import genuine_photo
    rgb = genuine_photo(shared_data)
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    crop = align_face(rgb, det.detect(rgb).faces[0].keypoints)
    emb = FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite")))
    emb.embed_one(crop)
    emb.wipe()
    rt = emb.runtimes[0]
    assert rt.holds_no_face()
    vec = emb.embed_one(crop).vector            # a face goes through again: the check sees it
    assert not rt.holds_no_face()
    out = np.concatenate([np.ravel(rt.get(n)) for n in rt._out])
    assert np.abs(out).max() > 0 and np.linalg.norm(vec) > 0
    emb.wipe()
    assert rt.holds_no_face()
