"""match.embed_ahead (device/vision/ahead.py): the top-k, first and last crops embedded during capture on a
second thread (on the suite's embedder, one call at a time). Real models, real frames of the blink video; the old synchronous path is the reference."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.faces import BLINK_VIDEO, genuine_photo

FRAMES = 150


def _suite(model_dir, ahead: bool):
    from device import config as C
    from device.vision.suite import VisionSuite
    cfg = C.replace(C.from_dict({}), **{"models.dir": str(model_dir), "match.embed_ahead": ahead})
    return VisionSuite.create(cfg, model_dir)


@pytest.fixture(scope="module")
def frames(shared_data):
    from device.camera.replay import decode_video
    return list(decode_video(shared_data / BLINK_VIDEO, limit=FRAMES))


@pytest.fixture(scope="module")
def suites(model_dir):
    a, s = _suite(model_dir, True), _suite(model_dir, False)
    yield a, s
    a.reset()
    s.reset()


def _capture(suite, frames, photo, on_crop=None):
    """What Session does with the suite: card face, every frame through observe + quality_crop, the first
    and the newest passing crop kept. -> (card_face, best, first, last)."""
    card_face = suite.card_face(photo.copy())
    best = suite.best_frames()
    first = last = None
    for rgb, t in frames:
        obs = suite.observe(rgb, t)
        crop = suite.quality_crop(rgb, obs, best)
        if crop is None:
            continue
        if on_crop is not None:
            on_crop(crop, t)
        if first is None:
            first = crop.copy()
        elif last is None:
            last = crop.copy()
        else:
            last[:] = crop
    return card_face, best, first, last


def _idle(ahead, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with ahead._cv:
            jobs = ahead.top_jobs + [ahead.first_job, ahead.last_job]
            if not ahead._queue and all(j is None or j.state != "running" for j in jobs):
                return
        time.sleep(0.01)
    raise AssertionError("the worker did not finish")


def _match_counting(suite, embedder, captured):
    """suite.match on a capture -> (MatchResult, how many model calls (invokes) the decision made)."""
    card_face, best, first, last = captured
    calls = [0]
    rt = embedder._rt
    orig = rt.invoke

    def counted(*args):
        if threading.current_thread() is threading.main_thread():   # not the worker's
            calls[0] += 1
        return orig(*args)
    rt.invoke = counted
    try:
        return suite.match(card_face, best.crops(), first, last), calls[0]
    finally:
        del rt.invoke


@pytest.mark.parametrize("wait_for_worker", [True, False], ids=["all_ahead", "decision_right_after_capture"])
def test_similarity_equals_the_synchronous_path(suites, frames, shared_data, wait_for_worker):
    """Same top-k crops: the mean-embedding similarity is the old path's to float tolerance, whether the
    worker finished everything (no embedder call at the decision) or the decision comes right after the
    last frame (some jobs taken back or waited for)."""
    from device.vision.embed import cosine
    ahead_suite, sync_suite = suites
    photo = genuine_photo(shared_data)
    lasts = []                       # the crops the worker was given as the end identity
    newest = [None]                  # frame time of the newest passing crop

    def on_crop(crop, t):
        newest[0] = t
        j = ahead_suite.ahead.last_job
        if j is not None and (not lasts or lasts[-1][0] is not j):
            lasts.append((j, crop.copy(), t))
    cf_a, best_a, first_a, last_a = _capture(ahead_suite, frames, photo, on_crop)
    cf_s, best_s, first_s, last_s = _capture(sync_suite, frames, photo)
    try:
        assert sync_suite.ahead is None and ahead_suite.ahead is not None
        assert len(best_a) == len(best_s) == ahead_suite.cfg.match.top_k
        assert all(np.array_equal(a, b) for a, b in zip(best_a.crops(), best_s.crops())), "same top-k crops"
        assert np.array_equal(first_a, first_s) and np.array_equal(last_a, last_s)
        assert lasts, "the worker was given end-identity crops"
        held = 0
        if wait_for_worker:
            _idle(ahead_suite.ahead)
            # top-k crops younger than settle_s are held back from the worker: the decision embeds them
            held = sum(j.state == "held" for j in ahead_suite.ahead.top_jobs)
        m_a, calls = _match_counting(ahead_suite, ahead_suite.embedder, (cf_a, best_a, first_a, last_a))
        m_s = sync_suite.match(cf_s, best_s.crops(), first_s, last_s)
        if wait_for_worker:
            assert calls == ahead_suite.embedder.calls_for(held), "all but the held crops were embedded ahead"
            assert held < ahead_suite.cfg.match.top_k
        assert m_a.similarity == pytest.approx(m_s.similarity, abs=1e-5)
        assert m_s.similarity > 0.5          # the genuine subject: a real comparison, not two zeros
        # the end identity: the newest crop the worker was given (at most LAST_MAX_AGE_S older than the
        # newest passing crop), or the newest crop itself when that job was taken back
        from device.vision.ahead import LAST_MAX_AGE_S
        j, last_crop, t_last = lasts[-1]
        assert 0 <= newest[0] - t_last < LAST_MAX_AGE_S
        e = sync_suite.embedder
        ref_last = cosine(e.embed_one(first_s).vector, e.embed_one(last_crop).vector)
        ref_newest = cosine(e.embed_one(first_s).vector, e.embed_one(last_s).vector)
        assert m_a.identity is not None and m_s.identity == pytest.approx(ref_newest, abs=1e-5)
        assert min(abs(m_a.identity - ref_last), abs(m_a.identity - ref_newest)) < 1e-5
        if wait_for_worker:
            assert m_a.identity == pytest.approx(ref_last, abs=1e-5)
        m_a.wipe()
        m_s.wipe()
    finally:
        for b in (best_a, best_s):
            b.wipe()
        ahead_suite.reset()
        sync_suite.reset()


def test_worker_holds_crops_during_capture_and_nothing_after_reset(suites, frames, shared_data):
    """Mid-session the worker holds vectors and its interpreter the last crop (so the checks can fail);
    reset() ends the thread, zero-fills every copy and vector and wipes its interpreter."""
    ahead_suite, _ = suites
    ah = ahead_suite.ahead
    calls0 = ah.calls
    cf, best, first, last = _capture(ahead_suite, frames, genuine_photo(shared_data))
    _idle(ah)
    held = [j.vec for j in ah.top_jobs + [ah.first_job, ah.last_job] if j is not None and j.vec is not None]
    assert len(held) >= 3 and all(v.any() for v in held)
    assert ah.calls > calls0 and ah._thread is not None and ah._thread.is_alive()
    assert not ah.embedder.runtimes[0].holds_no_face()
    refs = list(held)
    best.wipe()
    ahead_suite.reset()
    assert ah._thread is None and ah.top_jobs == [] and ah.first_job is None and ah.last_job is None
    assert not any(v.any() for v in refs), "the vectors were zero-filled, not only dropped"
    assert all(rt.holds_no_face() for rt in ah.embedder.runtimes)
    assert not any(t.name == "kyc-embed-ahead" for t in threading.enumerate())


def test_a_crop_that_leaves_the_top_k_is_cancelled_and_zero_filled(model_dir):
    """Unit level, on the real embedder: top() copies new crops, cancels those gone (their copy or vector
    zero-filled), and a queued job taken back at the decision leaves its crop to the caller."""
    from device.vision.ahead import AheadEmbedder
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    ah = AheadEmbedder(FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite"))))
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, 255, (112, 112, 3), np.uint8) for _ in range(3))
    try:
        ah.top([a, b])
        ja, jb = ah.job_for(a), ah.job_for(b)
        assert ja is not None and jb is not None and ja.crop is not a and ja.src is a
        _idle(ah)
        assert ja.state == jb.state == "done"
        vb = jb.vec
        ah.top([a, c])                         # b left the top k
        assert ah.job_for(b) is None and jb.state == "cancelled" and not vb.any()
        _idle(ah)
        got, running = ah.collect([a, c], identity=False)
        assert not running and set(got) == {("live", 0), ("live", 1)}
        for v in got.values():
            assert v.shape == (192,) and abs(np.linalg.norm(v) - 1) < 1e-4
        # a job not started yet is taken back (worker busy): the caller embeds that crop itself
        with ah._cv:                            # hold the worker off while queuing
            ah.top([a, b])
            jb2 = ah.job_for(b)
            got2, running2 = ah.collect([b], identity=False)
        assert got2 == {} and running2 == {} and jb2.state == "taken" and jb2.crop is None
    finally:
        ah.stop()
        ah.embedder.wipe()
    assert ah._thread is None and all(rt.holds_no_face() for rt in ah.embedder.runtimes)


def test_a_top_k_crop_is_held_until_it_has_stayed(model_dir):
    """With frame times, a new top-k crop goes to the worker only after settle_s in the top k (a crop
    replaced sooner costs nothing); at the decision a held crop is taken back for the caller to embed."""
    from device.vision.ahead import AheadEmbedder
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    ah = AheadEmbedder(FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite"))), settle_s=0.2)
    rng = np.random.default_rng(2)
    a, b, c, n = (rng.integers(0, 255, (112, 112, 3), np.uint8) for _ in range(4))
    try:
        ah.top([a, b], t=1.0)
        ah.newest(n, 1.0)                       # the first crop: queued at once
        ja, jb = ah.job_for(a), ah.job_for(b)
        assert ja.state == jb.state == "held"
        ah.top([a, c], t=1.1)                   # b replaced before it settled: never embedded
        assert jb.state == "cancelled" and jb.crop is None
        ah.newest(n, 1.25)                      # a has stayed 0.25 s: queued; c (0.15 s) still held
        jc = ah.job_for(c)
        assert ja.state in ("queued", "running", "done") and jc.state == "held"
        _idle(ah)
        got, running = ah.collect([a, c], identity=False)
        assert not running and set(got) == {("live", 0)} and jc.state == "taken" and jc.crop is None
        assert ah.calls in (1, 2)               # the first crop and a (one batch-of-2 call if both waited)
    finally:
        ah.stop()
        ah.embedder.wipe()


def test_the_second_embedders_chips_are_embedded_ahead_too(model_dir, frames, shared_data):
    """match.second_embedder with match.embed_ahead: the top second_top_k chips go to a worker of their own
    during capture, so once it is idle the decision makes no second-embedder call, and the fused
    similarity is the synchronous path's; reset() ends it and leaves nothing behind."""
    from device import config as C
    from device import models as M
    from device.vision.suite import VisionSuite
    from tests.conftest import need
    need(M.derived(model_dir, "embedder2"))
    mk = lambda ahead: VisionSuite.create(C.replace(C.from_dict({}), **{     # noqa: E731
        "models.dir": str(model_dir), "match.embed_ahead": ahead, "match.second_embedder": True}), model_dir)
    a, s = mk(True), mk(False)
    photo = genuine_photo(shared_data)
    best_a = best_s = None
    try:
        assert a.ahead2 is not None and s.ahead2 is None
        cf_a, best_a, first_a, last_a = _capture(a, frames, photo)
        cf_s, best_s, first_s, last_s = _capture(s, frames, photo)
        assert all(np.array_equal(x, y) for x, y in zip(best_a.chips(), best_s.chips())), "same chips"
        _idle(a.ahead)
        _idle(a.ahead2)
        assert a.ahead2.calls >= 1                       # the worker did embed chips
        held = sum(j.state == "held" for j in a.ahead2.top_jobs)
        m_a, calls = _match_counting(a, a.embedder2, (cf_a, best_a, first_a, last_a))
        m_s = s.match(cf_s, best_s.crops(), first_s, last_s)
        assert calls == (1 if held else 0), "only chips held back (younger than settle_s) embedded here"
        assert m_a.components is not None and m_s.components is not None
        assert m_a.components[1] == pytest.approx(m_s.components[1], abs=1e-5)
        assert m_a.similarity == pytest.approx(m_s.similarity, abs=1e-5)
        assert m_s.components[1] > 0.8                   # the genuine subject, on dlib's compressed scale
        m_a.wipe()
        m_s.wipe()
    finally:
        for b in (best_a, best_s):
            if b is not None:
                b.wipe()
        worker = a.ahead2
        a.reset()
        s.reset()
    assert worker._thread is None and not worker.top_jobs and not worker._queue
    assert all(rt.holds_no_face() for rt in a.runtimes)


def test_with_the_worker_capture_makes_no_embedder_call_on_the_frame_thread(suites, frames, shared_data):
    """match.embed_ahead: the first crop goes to the worker like the others; the frame thread itself never
    embeds (the synchronous first-crop embedding is the path without the worker only)."""
    ahead_suite, sync_suite = suites
    photo = genuine_photo(shared_data)
    frame_thread = threading.get_ident()
    for suite, expect in ((ahead_suite, 0), (sync_suite, 1)):
        on_frame_thread = [0]
        orig = suite.embedder.embed_one

        def counted(crop, _orig=orig):
            if threading.get_ident() == frame_thread:
                on_frame_thread[0] += 1
            return _orig(crop)
        suite.embedder.embed_one = counted
        try:
            card_face = suite.card_face(photo.copy())
            best = suite.best_frames()
            for rgb, t in frames[:60]:
                suite.quality_crop(rgb, suite.observe(rgb, t), best)
        finally:
            del suite.embedder.embed_one
            best.wipe()
            if card_face is not None:
                card_face.fill(0)
            suite.reset()
        assert on_frame_thread[0] == expect, (suite.ahead is not None, on_frame_thread[0])
