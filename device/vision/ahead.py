"""Embedding ahead of the decision: a second thread embeds the session's match crops during capture.

The decision after the last challenge then only compares vectors and signs (docs/performance.md, P3).
VisionSuite owns one AheadEmbedder (match.embed_ahead) and tells it, from quality_crop():

- top(crops, t): the current BestFrames crops, after every offer that changed them. A crop new to the top
  k is copied and held; once it has stayed in the top k for `settle_s` of frame time (SETTLE_S, 0.2 s) it
  is queued. A job whose crop left the top k is cancelled (its copy, or its vector, zero-filled). The top
  3 changes 9-13 times in a blink-video session; holding new entrants saves the calls for those replaced
  within 0.2 s (11 -> 9 worker calls per session, measured), and none of the measured decisions had a
  held crop left to embed.
- newest(crop, t): every passing crop with its frame time. The session's first one is queued as the
  start identity ("first"); after it, one crop every `every_s` of frame time (default 0.3 s) is queued as
  the end identity ("last"), replacing the previous one. So the end-identity vector the decision uses
  was made from a crop at most `every_s` of frame time older than the session's newest passing crop
  (LAST_MAX_AGE_S; 9 frames at 30 fps); when there is none the decision embeds the newest crop itself.

At the decision, collect() hands over the finished vectors and takes back the jobs the worker has not
started (the caller embeds those crops itself, on its own interpreter, while the worker finishes its
current job); wait() then waits for that running job. Nothing waits longer than the one call in flight.

Threads and interpreters: the worker embeds on the suite's one FaceEmbedder, whose lock lets one call
run at a time (an interpreter is never used by two threads at once). LiteRT releases the GIL inside
invoke() (measured: two threads on two interpreters give 1.8x the throughput of one on two cores, and a
pure-Python thread keeps its full rate while another invokes), so the worker's calls run on the second
core while the frame path runs on the first. A second interpreter of its own was measured and not kept:
it costs 17.8 MB RSS (int8 MobileFaceNet at batch 2: fp32-dequantised weights, XNNPACK's packed copy and
the activations; 21.2 MB float) against issue 17's 150 MB target, and it would only help when the
decision has to embed a crop while the worker is in the middle of another: then the two calls run one
after the other instead of side by side (one call more in the worst case). The worker embeds as many queued
crops per call as the model's batch (1 for the int8 build at batch 1, 2 for the batch-2 files).

Privacy: every crop copy is zero-filled once embedded or cancelled, every vector when taken over by the
caller (who wipes it), cancelled or replaced; stop() (VisionSuite.reset, before the embedder's wipe)
cancels what is queued, waits for the running call, zero-fills everything held and ends the thread.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from device.vision.embed import FaceEmbedder

LAST_EVERY_S = 0.3          # frame time between two end-identity crops sent to the worker
LAST_MAX_AGE_S = LAST_EVERY_S   # the end-identity crop used is at most this much older than the newest
WAIT_MAX_S = 2.0            # the decision never waits longer for a job in flight (one call is ~16 ms here)

SETTLE_S = 0.2             # a top-k crop is queued once it has stayed in the top k this long (frame time)

HELD, QUEUED, RUNNING, DONE, FAILED, TAKEN, CANCELLED = \
    "held", "queued", "running", "done", "failed", "taken", "cancelled"


class Job:
    """One crop to embed. `src`: the caller's array it was copied from (its identity, never read here)."""

    def __init__(self, src: np.ndarray | None, crop: np.ndarray, t: float | None = None):
        self.src, self.crop, self.vec, self.state, self.t = src, crop, None, QUEUED, t

    def clear(self) -> None:
        for a in (self.crop, self.vec):
            if a is not None:
                a.fill(0)
        self.src = self.crop = self.vec = None

    def __repr__(self) -> str:
        return f"Job({self.state})"


class AheadEmbedder:
    def __init__(self, embedder: FaceEmbedder, every_s: float = LAST_EVERY_S, settle_s: float = SETTLE_S,
                 name: str = "kyc-embed-ahead"):
        self.embedder = embedder       # the suite's: one call at a time under its lock (see the module doc)
        self.name = name
        self.every_s = float(every_s)
        self.settle_s = float(settle_s)
        self._cv = threading.Condition()
        self._queue: list[Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.top_jobs: list[Job] = []
        self.first_job: Job | None = None
        self.last_job: Job | None = None
        self._last_t: float | None = None
        # numbers only, cumulative over the suite's life: what the worker cost (the bench's CPU figure)
        self.calls = 0
        self.cpu_ms = 0.0

    # -- capture side (the session's thread)
    def top(self, crops, t: float | None = None) -> None:
        """The current top-k crops (BestFrames.crops()) at frame time t: copy the new ones (held until they
        have stayed `settle_s`, see newest()), cancel the ones that left."""
        with self._cv:
            keep = []
            for j in self.top_jobs:
                if any(j.src is c for c in crops):
                    keep.append(j)
                else:
                    self._cancel(j)
            for c in crops:
                if not any(j.src is c for j in keep):
                    if self.settle_s > 0 and t is not None:
                        job = Job(c, c.copy(), t)
                        job.state = HELD
                        keep.append(job)
                    else:
                        keep.append(self._submit(c, c.copy()))
            self.top_jobs = keep

    def newest(self, crop: np.ndarray, t: float) -> None:
        """A passing crop at frame time t: the first is the start identity, then one every `every_s`."""
        with self._cv:
            if self.first_job is None:
                self.first_job = self._submit(None, crop.copy(), t)
                self._last_t = t
            elif t - self._last_t >= self.every_s:
                if self.last_job is not None:
                    self._cancel(self.last_job)
                self.last_job = self._submit(None, crop.copy(), t)
                self._last_t = t
            self._settle(t)

    def settle(self, t: float) -> None:
        """Frame time t passed: the top-k crops that stayed `settle_s` go to the worker (newest() does this
        too; a user without first/last identity crops, the second embedder's chips, calls it alone)."""
        with self._cv:
            self._settle(t)

    def _settle(self, t: float) -> None:
        for j in self.top_jobs:         # top-k crops that stayed: to the worker
            if j.state == HELD and t - j.t >= self.settle_s:
                self._queue_job(j)

    # -- decision side
    def job_for(self, crop: np.ndarray) -> Job | None:
        return next((j for j in self.top_jobs if j.src is crop), None)

    def collect(self, crops, identity: bool) -> tuple[dict, dict]:
        """The decision's first pass, without waiting: ({key: vector} of the finished jobs, {key: job} of the
        running ones). Keys: ("live", i) for crops[i], and with `identity` "first" and "last". A job not
        started yet is taken back: its key is in neither, and the caller embeds that crop itself."""
        jobs = [(("live", i), self.job_for(c)) for i, c in enumerate(crops)]
        if identity:
            jobs += [("first", self.first_job), ("last", self.last_job)]
        got, running = {}, {}
        with self._cv:
            for k, j in jobs:
                if j is None:
                    continue
                if j.state == RUNNING:
                    running[k] = j
                else:
                    v = self._take(j)
                    if v is not None:
                        got[k] = v
        return got, running

    def wait(self, running: dict) -> dict:
        """{key: vector, or None if the job failed} for the jobs collect() found running (waits for them:
        the worker runs one at a time, so at most one embedder call)."""
        deadline = time.monotonic() + WAIT_MAX_S
        with self._cv:
            out = {}
            for k, j in running.items():
                while j.state == RUNNING and time.monotonic() < deadline:
                    self._cv.wait(max(deadline - time.monotonic(), 0.001))
                if j.state == RUNNING:  # a worker that hangs: the caller embeds it; the worker clears it
                    j.state, out[k] = CANCELLED, None
                else:
                    out[k] = self._take(j)
            return out

    def _take(self, job: Job) -> np.ndarray | None:
        """(under self._cv, job not running) Hand the vector over (the caller wipes it) or take the job back."""
        vec = None
        if job.state == DONE:
            vec, job.vec = job.vec, None
        elif job.state == QUEUED:
            self._queue.remove(job)
        job.state = TAKEN
        job.clear()
        return vec

    def stop(self) -> None:
        """End of session: cancel what is queued, wait for the running job, zero-fill every crop and
        vector held, end the thread, wipe the worker's interpreter."""
        with self._cv:
            self._stopping = True
            for j in self._queue:
                j.state = CANCELLED
                j.clear()
            self._queue.clear()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cv:
            for j in self.top_jobs + [self.first_job, self.last_job]:
                if j is not None:
                    j.clear()
            self.top_jobs, self.first_job, self.last_job, self._last_t = [], None, None, None
            self._stopping = False

    # -- internals (under self._cv)
    def _submit(self, src, crop: np.ndarray, t: float | None = None) -> Job:
        return self._queue_job(Job(src, crop, t))

    def _queue_job(self, job: Job) -> Job:
        job.state = QUEUED
        self._queue.append(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._cv.notify_all()
        return job

    def _cancel(self, job: Job) -> None:
        if job.state == QUEUED:
            self._queue.remove(job)
        if job.state != RUNNING:        # a running job's copy is the worker's: it clears it when done
            job.clear()
        job.state = CANCELLED

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                k = min(self.embedder.batch, 2)   # as many per call as the model's batch
                jobs = self._queue[:k]
                del self._queue[:k]
                for j in jobs:
                    j.state = RUNNING
                crops = [j.crop for j in jobs]
            c0 = time.thread_time()
            vecs = [None] * len(jobs)
            try:
                if len(crops) == 2:
                    r = self.embedder.embed(crops[0], crops[1])
                    vecs = [r.vectors[0], r.vectors[1]]
                else:
                    vecs = [self.embedder.embed_one(crops[0]).vector]
            except Exception:  # noqa: BLE001 - the decision embeds these crops itself
                vecs = [None] * len(jobs)
            finally:
                for c in crops:
                    c.fill(0)
            with self._cv:
                self.calls += 1
                self.cpu_ms += (time.thread_time() - c0) * 1000.0
                for job, vec in zip(jobs, vecs):
                    if job.state == RUNNING and vec is not None:
                        job.vec, job.state = vec, DONE
                        job.crop = None
                    else:               # cancelled while running, or failed
                        if vec is not None:
                            vec.fill(0)
                        job.state = FAILED if job.state == RUNNING else job.state
                        job.clear()
                self._cv.notify_all()

    def __repr__(self) -> str:
        return f"AheadEmbedder(top={len(self.top_jobs)}, queued={len(self._queue)})"
