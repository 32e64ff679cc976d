"""Every model the session needs, loaded once, behind the few calls session.py makes.

The daemon builds one suite at start (and a new one on a hot swap); a session borrows it and calls
reset() when it ends, so no state of one customer survives into the next.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device import models as models_mod
from device.config import Config, LivenessConfig
from device.liveness.challenges import ChallengeRunner
from device.liveness.decision import decide
from device.liveness.tracking import FaceTracker, TrackerOptions
from device.vision.align import align_face
from device.vision.detect import DetectorOptions, FaceDetector
from device.vision.embed import EmbedderOptions, FaceEmbedder, cosine, l2n, prepare_card_face
from device.vision.quality import BestFrames, assess


class VisionSuite:
    def __init__(self, cfg: Config, model_dir: Path):
        self.cfg = cfg
        paths = models_mod.resolve(Path(model_dir), cfg.models.set, cfg.models.detector)
        self.paths = paths
        self.versions = models_mod.versions(paths)
        th = cfg.models.threads
        self.detector = FaceDetector.create(DetectorOptions(str(paths["detector"]), variant=cfg.models.detector,
                                                            threads=th))
        pad = (str(paths["antispoof_v2"]), str(paths["antispoof_v1se"])) if cfg.liveness.pad_enabled else None
        self.tracker = FaceTracker.create(TrackerOptions(
            detector_path=str(paths["detector"]), landmark_path=str(paths["landmarks"]), pad_paths=pad,
            iris_path=str(paths["iris"]),
            threads=th, quality=cfg.quality, detector_variant=cfg.models.detector,
            blink_min_s=cfg.liveness.blink_min_s, blink_max_s=cfg.liveness.blink_max_s))
        self.embedder = FaceEmbedder.create(EmbedderOptions(str(paths["embedder"]), threads=th))

    @classmethod
    def create(cls, cfg: Config, model_dir: Path) -> "VisionSuite":
        return cls(cfg, model_dir)

    # -- card
    def card_face(self, photo: np.ndarray) -> np.ndarray | None:
        return prepare_card_face(self.detector, photo)

    # -- per frame
    def observe(self, rgb: np.ndarray, t: float):
        return self.tracker.observe(rgb, t)

    def best_frames(self) -> BestFrames:
        return BestFrames(self.cfg.match.top_k)

    def quality_crop(self, rgb: np.ndarray, obs, best: BestFrames) -> np.ndarray | None:
        """Align the tracked face; if it passes the quality gate offer it to `best` and return it."""
        if obs.keypoints is None or obs.box is None:
            return None
        aligned = align_face(rgb, obs.keypoints)
        q = assess(rgb, obs.box, aligned, obs.yaw, obs.pitch, obs.ear, self.cfg.quality)
        if not q.ok:
            aligned.fill(0)
            return None
        best.offer(q.score, aligned)
        return aligned

    # -- decision
    def match(self, card_face, crops, first, last):
        """(similarity of the mean top-k live embedding to the card, start/end identity similarity, vectors).

        The card is embedded once, in the same batch-of-2 call as the best live crop."""
        res = self.embedder.embed(crops[0], card_face)
        live = [res.vectors[0]]
        card_vec = res.vectors[1]
        rest = list(crops[1:])
        while rest:
            a = rest.pop(0)
            b = rest.pop(0) if rest else a
            r = self.embedder.embed(a, b)
            live.append(r.vectors[0])
            if b is not a:
                live.append(r.vectors[1])
        mean = l2n(np.mean(live, axis=0))
        similarity = cosine(mean, card_vec)
        identity = None
        if first is not None and last is not None:
            r = self.embedder.embed(first, last)
            identity = cosine(r.vectors[0], r.vectors[1])
            r.vectors.fill(0)
        vecs = np.stack(live + [card_vec, mean])
        for v in live:
            v.fill(0)
        return similarity, identity, vecs

    def challenge_runner(self, lv: LivenessConfig, rng, challenges: list[str] | None):
        return ChallengeRunner(lv, rng=rng, sequence=challenges)

    def decide(self, runner, ev, identity_sim, lv: LivenessConfig):
        return decide(runner, ev.pad_scores, ev.faces_max, ev.face_lost, identity_sim, lv)

    def reset(self) -> None:
        self.tracker.reset()
