"""Every model the session needs, loaded once, behind the few calls session.py makes.

The daemon builds one suite at start (and a new one on a hot swap); a session borrows it and calls
reset() when it ends, so no state of one customer survives into the next: reset() also zero-fills
every interpreter's input tensors (`runtimes`, checked by tests/test_privacy.py).

Per frame: observe() (the tracker: detect, landmarks, iris, pose, blink, PAD) and quality_crop()
(align + quality gate, offered to BestFrames). Matching is a stage of its own: match(card face,
best crops, first, last) -> MatchResult. The liveness rules are not here: device.liveness.check.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dataclasses import dataclass

from device import models as models_mod
from device.config import Config
from device.vision import quality as quality_mod
from device.vision.ahead import AheadEmbedder
from device.vision.embed import EmbedderOptions, FaceEmbedder, cosine, l2n, prepare_card_face
from device.vision import embed2
from device.vision.quality import BestFrames
from device.vision.tracking import build_tracker

log = logging.getLogger("kyc_edge.vision")


@dataclass(repr=False)
class MatchResult:
    """The matching stage's output. `vectors` (live embeddings, card, mean) are biometric: wipe()."""
    similarity: float                      # mean top-k live embedding vs the card (fused, with match.second_embedder)
    identity: float | None                 # session's first vs last passing crop (None: not checked)
    vectors: np.ndarray
    components: tuple | None = None        # (MobileFaceNet cosine, second embedder cosine) when fused

    def wipe(self) -> None:
        self.vectors.fill(0)

    def __repr__(self) -> str:
        return f"MatchResult(similarity={self.similarity:.3f}, identity={self.identity})"


class VisionSuite:
    def __init__(self, cfg: Config, model_dir: Path):
        self.cfg = cfg
        paths = models_mod.resolve(Path(model_dir), cfg.models.set, cfg.models.detector)
        self.paths = paths
        self.versions = models_mod.versions(paths)
        th = cfg.models.threads
        self.tracker = build_tracker(paths, threads=th, pad=cfg.liveness.pad_enabled, quality=cfg.quality,
                                     detector_variant=cfg.models.detector, blink_min_s=cfg.liveness.blink_min_s,
                                     blink_max_s=cfg.liveness.blink_max_s, pad_fusion=cfg.liveness.pad_fusion)
        self.detector = self.tracker.detector   # one BlazeFace for the card photo and the frames (stateless per call)
        self.embedder = FaceEmbedder.create(EmbedderOptions(str(paths["embedder"]), threads=th))
        # the optional second embedder (dlib ResNet, match.second_embedder): score-level fusion in match()
        self.embedder2 = None
        if cfg.match.second_embedder:
            p2 = models_mod.derived(Path(model_dir), "embedder2", model_set=cfg.models.set)
            if p2 is None:
                from device.errors import ModelError
                raise ModelError("model_unavailable", "match.second_embedder: the manifest pins no embedder2")
            if p2.is_file():
                self.embedder2 = embed2.SecondEmbedder.create(embed2.SecondEmbedderOptions(str(p2), threads=th))
                paths = {**paths, "embedder2": p2}
                self.paths = paths
                self.versions = models_mod.versions(paths)
            else:
                # optional: setup could not build it (no package, no quantizer). MobileFaceNet alone decides;
                # the fused score is calibrated onto its scale, so match.threshold keeps its meaning
                log.warning("match.second_embedder: %s is not installed (scripts/setup builds it); "
                            "matching with MobileFaceNet alone", p2.name)
        self._card_vec2: np.ndarray | None = None
        self._best: BestFrames | None = None
        # embeddings made ahead of the decision (card at card-read time, the session's first crop during
        # capture), so the last-challenge -> verdict path runs fewer embedder calls; wiped in reset()
        self._card_vec: np.ndarray | None = None
        self._first_vec: np.ndarray | None = None
        self.last_failed: tuple[str, ...] = ()   # quality gates the last tracked face failed (hints)
        # match.embed_ahead: the top-k, first and last crops embedded during capture on a second thread,
        # on this embedder, one call at a time (device/vision/ahead.py); the decision is then a comparison
        self.ahead = AheadEmbedder(self.embedder) if cfg.match.embed_ahead else None
        # the second embedder's top chips, the same way on a worker of their own (its own interpreter)
        self.ahead2 = (AheadEmbedder(embed2.AheadAdapter(self.embedder2), name="kyc-embed2-ahead")
                       if cfg.match.embed_ahead and self.embedder2 is not None else None)
        # each model's first invoke (XNNPACK's lazy set-up, then the runtime drops the mapped file's pages)
        # happens here at start-up, on zeros, instead of on the first session's first frames
        for rt in self.runtimes:
            rt.wipe()

    @classmethod
    def create(cls, cfg: Config, model_dir: Path) -> "VisionSuite":
        return cls(cfg, model_dir)

    # -- card
    def align_still(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A still photo's face, aligned as the card is: (112x112 crop, the second embedder's chip on the
        same points, or None without match.second_embedder). (None, None) when no face is found."""
        chips: list[np.ndarray] = []
        on_points = None
        if self.embedder2 is not None:
            def on_points(img, pts):
                chips.append(embed2.face_chip(img, pts))
        face = prepare_card_face(self.detector, rgb, landmarker=self.tracker.landmarker, on_points=on_points)
        chip = chips.pop() if chips and face is not None else None
        for c in chips:
            c.fill(0)
        return face, chip

    def card_face(self, photo: np.ndarray) -> np.ndarray | None:
        face, chip = self.align_still(photo)
        # embedded now (with its mirror, one call), before capture starts: off the last-challenge -> verdict path
        self._card_vec = self.embedder.embed_card(face).vector if face is not None else None
        if chip is not None:
            self._card_vec2 = self.embedder2.embed_card(chip).vector
            chip.fill(0)
        return face

    # -- per frame
    def observe(self, rgb: np.ndarray, t: float):
        return self.tracker.observe(rgb, t)

    def best_frames(self) -> BestFrames:
        self._best = BestFrames(self.cfg.match.top_k)
        return self._best

    def quality_crop(self, rgb: np.ndarray, obs, best: BestFrames) -> np.ndarray | None:
        """Align the tracked face; if it passes the quality gate offer it to `best` and return it."""
        q, aligned = quality_mod.gate(rgb, obs, self.cfg.quality)
        self.last_failed = q.failed if q is not None else ()   # why no crop: the session's hints
        if aligned is None:
            return None
        chip = None
        if self.embedder2 is not None and best.would_keep(q.score):   # its chip, from the frame, same points
            from device.vision.align import mesh_points
            pts = mesh_points(obs.landmarks) if obs.landmarks is not None else obs.keypoints[:4]
            chip = embed2.face_chip(rgb, pts)
        kept = best.offer(q.score, aligned, chip)
        if chip is not None:
            chip.fill(0)
        if self.ahead is not None:     # the worker embeds the top k and the first/last crops (ahead.py)
            if kept:
                self.ahead.top(best.crops(), obs.t)
            self.ahead.newest(aligned, obs.t)
        elif self._first_vec is None:  # the session keeps its first passing crop as the start identity
            self._first_vec = self.embedder.embed_one(aligned).vector
        if self.ahead2 is not None:    # and the second embedder's chips of the top second_top_k
            if kept:
                self.ahead2.top(best.chips()[: self.cfg.match.second_top_k], obs.t)
            self.ahead2.settle(obs.t)
        return aligned

    def covered(self, rgb: np.ndarray, box_keypoints) -> bool:
        """A detected face without landmarks: is its lower face covered (a mask)?"""
        from device.vision.align import align_face
        from device.vision.occlusion import lower_face_covered
        if self.cfg.quality.max_covered >= 1.0:
            return False
        aligned = align_face(rgb, box_keypoints[1])
        try:
            return lower_face_covered(aligned, self.cfg.quality.max_covered)
        finally:
            aligned.fill(0)

    # -- decision
    def match(self, card_face, crops, first, last) -> MatchResult:
        """Best frames in, similarity out: the mean top-k live embedding vs the card, and the start/end
        identity similarity (first vs last passing crop; None when there is no last crop).

        The card is embedded at card_face; with match.embed_ahead the top-k crops, the first crop and a
        last crop (at most ahead.LAST_MAX_AGE_S of frame time older than `last`) were embedded during
        capture, and only what the worker has not done is embedded here (else, as without it: the first
        crop in quality_crop, the rest here), the model's batch per call."""
        card_vec = self._card_vec
        first_vec = self._first_vec if first is not None else None
        identity_wanted = first is not None and last is not None
        got, running = self.ahead.collect(crops, identity_wanted) if self.ahead is not None else ({}, {})

        def embed(todo) -> None:       # the model's batch per call (embedder.calls_for(len(todo)) calls)
            if todo:
                r = self.embedder.embed_many([c for _, c in todo])
                for (k, _), v in zip(todo, r.vectors):
                    got[k] = v
        # one queue of faces still to embed: live crops, the card if it was not embedded at card-read
        # time, the first crop if not embedded during capture, the last crop
        todo = [(("live", i), c) for i, c in enumerate(crops) if ("live", i) not in got and ("live", i) not in running]
        if card_vec is None:
            todo.append(("card", card_face))
        if identity_wanted:
            if first_vec is None and "first" not in got and "first" not in running:
                todo.append(("first", first))
            if "last" not in got and "last" not in running:
                todo.append(("last", last))
        embed(todo)
        if running:                    # the worker's job in flight (at most one call); a failed one: here
            late = self.ahead.wait(running)
            got.update({k: v for k, v in late.items() if v is not None})
            face = {"first": first, "last": last}
            embed([(k, crops[k[1]] if k[0] == "live" else face[k]) for k, v in late.items() if v is None])
        live = [got.pop(("live", i)) for i in range(len(crops))]
        card_vec = got.get("card", card_vec)
        first_vec = got.get("first", first_vec)
        mean = l2n(np.mean(live, axis=0))
        similarity = cosine(mean, card_vec)
        identity = None
        if first_vec is not None and "last" in got:
            identity = cosine(first_vec, got["last"])
            got["last"].fill(0)
        vecs = np.stack(live + [card_vec, mean])
        for v in live + list(got.values()):
            v.fill(0)
        components = None
        chips = self._best.chips()[: self.cfg.match.second_top_k] if self._best is not None else []
        if self.embedder2 is not None and self._card_vec2 is not None and chips:
            vecs2 = self._second_vectors(chips)
            mean2 = l2n(np.mean(vecs2, axis=0))
            sim2 = cosine(mean2, self._card_vec2)
            for v in vecs2 + [mean2]:
                v.fill(0)
            components = (similarity, sim2)
            similarity = embed2.fuse(similarity, sim2, self.cfg.match.fusion_weight)
        return MatchResult(similarity, identity, vecs, components)

    def _second_vectors(self, chips) -> list[np.ndarray]:
        """The second embedder's descriptor of each chip: from its worker where done (waiting for the
        one call in flight), the rest here, two per call. The caller zero-fills them."""
        got, running = self.ahead2.collect(chips, False) if self.ahead2 is not None else ({}, {})
        todo = [i for i in range(len(chips)) if ("live", i) not in got and ("live", i) not in running]
        if running:
            late = self.ahead2.wait(running)
            got.update({k: v for k, v in late.items() if v is not None})
            todo += [k[1] for k, v in late.items() if v is None]
        if todo:
            r = self.embedder2.embed([chips[i] for i in todo])
            for i, v in zip(todo, r.vectors):
                got[("live", i)] = np.array(v)
            r.wipe()
        return [got[("live", i)] for i in range(len(chips))]

    @property
    def runtimes(self) -> tuple:
        """Every model interpreter this suite holds (device.vision.runtime.ModelRuntime)."""
        return self.tracker.runtimes + self.embedder.runtimes + (self.embedder2.runtimes if self.embedder2 else ())

    def reset(self) -> None:
        for worker in (self.ahead, self.ahead2):   # drain and end the workers, zero-fill copies and vectors
            if worker is not None:
                worker.stop()
        self.tracker.reset()
        self.tracker.wipe()
        self.embedder.wipe()
        if self.embedder2 is not None:
            self.embedder2.wipe()
        for v in (self._card_vec, self._first_vec, self._card_vec2):
            if v is not None:
                v.fill(0)
        self._card_vec = self._first_vec = self._card_vec2 = None
        self._best = None
