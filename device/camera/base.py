"""The frame contract and the capture/recovery machinery every backend shares.

A backend implements three hooks, all called from the capture thread only:

* ``_open_device()``  - open the hardware/file; raise ``CameraError`` (or anything) on failure;
* ``_grab()``         - wait (bounded, about 0.5 s at most) for the next frame and return
  ``(rgb, t_media_or_None)``, or ``None`` when no frame came; raise when the device is gone;
* ``_close_device()`` - release it (must not raise).

``FrameSource`` runs them in its own thread, keeps only the newest frame (one slot), counts the
frames overwritten before they were read (``dropped``), derives ``health`` from the time since the
last frame, and reopens the device with exponential back-off. Frames are never written to disk.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

HEALTH_STATES = ("ok", "stalled", "lost")
# Consecutive empty/failed reads after which a device that is still "open" is treated as broken
# and closed for a reopen (a pulled USB camera keeps returning read() == False at once).
MAX_EMPTY_GRABS = 50


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame. ``rgb`` is H x W x 3 uint8 RGB (C-contiguous, owned by this frame).

    ``t`` is monotonic seconds at capture (replay ``fast``: media time, starting near 0).
    ``n`` increases strictly per source (gaps mean frames the source lost or dropped).
    """
    rgb: np.ndarray
    t: float
    n: int

    def __repr__(self) -> str:  # never the pixels
        h, w = self.rgb.shape[:2]
        return f"Frame(n={self.n}, t={self.t:.3f}, {w}x{h})"

    def wipe(self) -> None:
        """Zero-fill the pixels (privacy: call when done with a frame that showed a face)."""
        self.rgb.fill(0)


def to_rgb(img: np.ndarray, order: str = "bgr") -> np.ndarray:
    """H x W x {1,3,4} or H x W, in BGR(A)/RGB(A)/grey -> H x W x 3 uint8 RGB, contiguous."""
    import cv2
    if img.dtype != np.uint8:
        raise CameraError("camera_unavailable", f"unsupported pixel type {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise CameraError("camera_unavailable", f"unsupported frame shape {img.shape}")
    if order == "bgr":
        code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(img, code)
    return np.array(img[:, :, :3], dtype=np.uint8, order="C", copy=True)


class FrameSource:
    """Base of every frame source. Thread-safe for one consumer.

    Life cycle: ``open()`` opens the device synchronously (raises ``CameraError('camera_unavailable')``
    if it cannot) and starts the capture thread; ``close()`` stops it. Both are idempotent; the
    source is a context manager. After ``close()`` it may be opened again.

    Health (derived from the time since the capture side last had a frame):
    ``ok`` -> ``stalled`` after ``cfg.stall_s`` without a frame (the device is then closed and
    reopened with exponential back-off from ``cfg.reopen_backoff_min_s`` up to
    ``cfg.reopen_backoff_max_s``) -> ``lost`` after ``cfg.lost_s`` without a frame (reopening goes
    on) -> ``ok`` as soon as a frame arrives again. A device error (exception in a read) closes and
    reopens the device at once, but health still follows the frame clock above.

    Staleness: outside replay ``fast``, a frame that waited in the slot for ``cfg.stall_s`` or more
    is discarded (counted in ``dropped``) instead of returned.

    Lost-camera behaviour: ``read()`` raises ``CameraError('camera_lost')`` while ``health`` is
    ``lost`` (also if it becomes lost during the wait). While ``ok``/``stalled`` it returns ``None``
    on timeout. A replay that played ``loop=False`` to the end sets ``eof`` and then ``read()``
    returns ``None`` at once (health stays ``ok``: the end of a file is not a camera failure).
    The same object recovers by itself: the next session just keeps calling ``read()``.

    ``progress`` is the monotonic time of the capture thread's last loop iteration (it iterates at
    least every ~0.5 s unless a driver call hangs): the daemon stops feeding its watchdog when it
    gets old. ``status_text`` is a one-line human summary for MQTT status / systemd STATUS=.
    """

    name = "base"
    #: fast replay: the producer waits for the consumer instead of overwriting (no drops).
    lossless = False

    def __init__(self, cfg, *, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg  # CameraConfig
        self._clock = clock
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._slot_at = 0.0
        self._returned_n = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._open = False
        self._dev_open = False
        self._n = 0
        self._last_frame_at = 0.0
        self._health = "ok"
        self._eof = False
        self.dropped = 0
        self.captured = 0
        self.progress = 0.0
        self.reopen_attempts = 0
        self.reopens_ok = 0
        self.last_error = ""
        self.transitions: collections.deque = collections.deque(maxlen=64)  # (t, old, new)
        self.reopen_delays: collections.deque = collections.deque(maxlen=64)  # back-off chosen
        self.reopen_times: collections.deque = collections.deque(maxlen=64)  # when attempts ran
        self._next_reopen_at = 0.0
        self._dev_opened_at = 0.0
        self._empty = 0
        self._backoff = 0.0
        self._fps_ema = 0.0
        self._prev_frame_at = None

    # ------------------------------------------------------------ hooks
    def _open_device(self) -> None:
        raise NotImplementedError

    def _grab(self):
        raise NotImplementedError

    def _close_device(self) -> None:
        pass

    def describe(self) -> str:
        """Short, PII-free description of the device (for logs / status)."""
        return self.name

    # ------------------------------------------------------------ life cycle
    def open(self) -> "FrameSource":
        if self._open:
            return self
        try:
            self._open_device()
        except CameraError as e:
            raise CameraError("camera_unavailable", f"{self.describe()}: {e.detail or e}") from None
        except Exception as e:  # noqa: BLE001 - driver libraries raise anything
            raise CameraError("camera_unavailable", f"{self.describe()}: {type(e).__name__}: {e}") from None
        now = self._clock()
        self._dev_open = True
        self._dev_opened_at = now
        self._open = True
        self._eof = False
        self._stop.clear()
        self._last_frame_at = now
        self.progress = now
        self._health = "ok"
        self._backoff = 0.0
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        log.info("camera %s opened", self.describe())
        return self

    def close(self) -> None:
        if not self._open:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
            if t.is_alive():
                log.warning("camera %s: capture thread did not stop (driver call hung)", self.describe())
        self._thread = None
        self._open = False
        with self._cond:
            if self._slot is not None:
                self._slot = None
            self._cond.notify_all()

    def __enter__(self) -> "FrameSource":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def eof(self) -> bool:
        return self._eof

    # ------------------------------------------------------------ health
    def _health_at(self, now: float) -> str:
        if self._eof:
            return "ok"
        quiet = now - self._last_frame_at
        if quiet >= self.cfg.lost_s:
            return "lost"
        if quiet >= self.cfg.stall_s:
            return "stalled"
        return "ok"

    def _update_health(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        with self._cond:
            new = self._health_at(now) if self._open else self._health
            old = self._health
            if new != old:
                self._health = new
                self.transitions.append((now, old, new))
                self._cond.notify_all()
        if new != old:
            lvl = logging.INFO if new == "ok" else logging.WARNING
            log.log(lvl, "camera %s: %s -> %s (%s)", self.describe(), old, new, self.status_text)
        return new

    @property
    def health(self) -> str:
        """'ok' | 'stalled' | 'lost' (computed now, so a hung driver call still shows up)."""
        return self._update_health()

    @property
    def fps(self) -> float:
        return self._fps_ema

    @property
    def status_text(self) -> str:
        now = self._clock()
        h = self._health_at(now) if self._open else "closed"
        if h == "closed":
            return f"camera closed ({self.describe()})"
        if self._eof:
            return f"camera ok ({self.describe()}, replay finished)"
        if h == "ok":
            return f"camera ok ({self.describe()}, {self._fps_ema:.1f} fps, dropped {self.dropped})"
        quiet = now - self._last_frame_at
        err = f"; last error: {self.last_error}" if self.last_error else ""
        nxt = max(0.0, self._next_reopen_at - now) if not self._dev_open else 0.0
        return (f"camera {h} ({self.describe()}): no frame for {quiet:.1f} s, "
                f"reopen attempt {self.reopen_attempts}, next in {nxt:.1f} s{err}")[:200]

    @property
    def pending(self) -> int:
        """Frames held for the consumer (0 or 1: the queue is one slot)."""
        with self._cond:
            return int(self._slot is not None and self._slot.n > self._returned_n)

    # ------------------------------------------------------------ consumer side
    def read(self, timeout: float = 1.0) -> Frame | None:
        """Newest frame not yet returned; ``None`` on timeout (or at replay EOF).

        Raises ``CameraError('camera_lost')`` while health is ``lost``, and
        ``CameraError('camera_unavailable')`` if the source is not open.
        """
        deadline = self._clock() + max(0.0, timeout)
        with self._cond:
            while True:
                if not self._open:
                    raise CameraError("camera_unavailable", "frame source is not open")
                f = self._slot
                if (f is not None and not self.lossless
                        and self._clock() - self._slot_at >= self.cfg.stall_s):
                    self._slot = None  # older than stall_s: stale, never handed out
                    self.dropped += 1
                    f = None
                if f is not None and f.n > self._returned_n:
                    self._returned_n = f.n
                    self._slot = None
                    self._cond.notify_all()  # a lossless producer waits for the empty slot
                    return f
                if self._eof:
                    return None
                now = self._clock()
                if self._health_at(now) == "lost":
                    raise CameraError("camera_lost", f"no frame for {now - self._last_frame_at:.1f} s")
                left = deadline - now
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))

    # ------------------------------------------------------------ producer side
    def _publish(self, rgb: np.ndarray, t: float | None = None, n: int | None = None) -> bool:
        """Hand a frame to the consumer. Returns False if the source is stopping."""
        now = self._clock()
        if n is None:
            n = self._n
        self._n = max(self._n, n) + 1
        frame = Frame(rgb=rgb, t=now if t is None else t, n=n)
        with self._cond:
            if self.lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                    self.progress = self._last_frame_at = self._clock()  # waiting on the consumer
                if self._stop.is_set():
                    return False
            elif self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self.captured += 1
            now = self._clock()
            self._slot_at = now
            self._last_frame_at = now
            if self._prev_frame_at is not None:
                dt = now - self._prev_frame_at
                if dt > 0:
                    inst = 1.0 / dt
                    self._fps_ema = inst if self._fps_ema == 0 else 0.9 * self._fps_ema + 0.1 * inst
            self._prev_frame_at = now
            self._cond.notify_all()
        return True

    def _set_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _device_failed(self, why: str) -> None:
        self.last_error = why[:120]
        log.warning("camera %s: %s; closing for reopen", self.describe(), self.last_error)
        if not self.lossless:  # a frame from before the failure is stale: never hand it out
            with self._cond:
                if self._slot is not None:
                    self._slot = None
                    self.dropped += 1
        self._close_quietly()
        self._schedule_reopen()

    def _close_quietly(self) -> None:
        if self._dev_open:
            try:
                self._close_device()
            except Exception as e:  # noqa: BLE001
                log.debug("camera %s: close failed: %s", self.describe(), e)
        self._dev_open = False

    def _schedule_reopen(self) -> None:
        """Back-off starts at reopen_backoff_min_s after a frame was seen, else doubles (capped)."""
        lo = min(getattr(self.cfg, "reopen_backoff_min_s", 0.25), self.cfg.reopen_backoff_max_s)
        if self._backoff <= 0:
            self._backoff = lo
        else:
            self._backoff = min(self._backoff * 2.0, self.cfg.reopen_backoff_max_s)
        self.reopen_delays.append(self._backoff)
        self._next_reopen_at = self._clock() + self._backoff

    def _try_reopen(self) -> None:
        self.reopen_attempts += 1
        self.reopen_times.append(self._clock())
        try:
            self._open_device()
        except Exception as e:  # noqa: BLE001
            self.last_error = (getattr(e, "detail", "") or f"{type(e).__name__}: {e}")[:120]
            log.info("camera %s: reopen attempt %d failed: %s", self.describe(), self.reopen_attempts, self.last_error)
            self._schedule_reopen()
            return
        self._dev_open = True
        self._dev_opened_at = self._clock()
        self._empty = 0
        self.reopens_ok += 1
        log.info("camera %s: reopened (attempt %d)", self.describe(), self.reopen_attempts)

    # ------------------------------------------------------------ the capture / recovery loop
    def _run(self) -> None:
        self._empty = 0
        try:
            while not self._stop.is_set():
                now = self.progress = self._clock()
                if self._eof:
                    self._stop.wait(0.1)
                    continue
                if self._dev_open:
                    try:
                        got = self._grab()
                    except Exception as e:  # noqa: BLE001
                        self._device_failed(getattr(e, "detail", "") or f"{type(e).__name__}: {e}")
                        got = None
                    else:
                        if got is None:
                            self._empty += 1
                            if self._empty >= MAX_EMPTY_GRABS and self._dev_open:
                                self._device_failed(f"{self._empty} reads without a frame")
                        else:
                            self._empty = 0
                            rgb, t, *rest = got
                            if not self._publish(rgb, t, rest[0] if rest else None):
                                break
                            self._backoff = 0.0
                    now = self._clock()
                    # Stalled while the device still counts as open: close it and reopen.
                    # (counted from the later of the last frame and the last reopen, so a persistent
                    # stall is retried at stall_s + back-off and the back-off keeps growing)
                    quiet = now - max(self._last_frame_at, self._dev_opened_at)
                    if self._dev_open and quiet >= self.cfg.stall_s and not self._eof:
                        self._device_failed(f"no frame for {now - self._last_frame_at:.1f} s")
                else:
                    if now >= self._next_reopen_at:
                        self._try_reopen()
                    else:
                        self._stop.wait(min(0.05, self._next_reopen_at - now))
                self._update_health()
        except Exception:  # noqa: BLE001 - never die silently; health will go stalled/lost
            log.exception("camera %s: capture thread crashed", self.describe())
            self.last_error = "capture thread crashed"
        finally:
            self._close_quietly()
