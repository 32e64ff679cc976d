"""Replay source: a video file, a folder of images or a single image, paced or as fast as consumed.

* video: anything OpenCV/FFmpeg decodes; per-frame timestamps from ``CAP_PROP_POS_MSEC`` (variable
  frame timing is kept), falling back to the declared fps if the container gives none.
* folder: image files sorted by name; timestamps from ``cfg.replay.fps`` if > 0, else from a
  ``frames.csv`` (column ``t_seconds`` plus ``frame`` index or ``file`` name, optionally a ``clip``
  column matching the folder name) in the folder or its parent, else 15 fps. With a frames.csv the
  files play in its time order (names need not sort that way).
* single image: the same picture at ``cfg.replay.fps`` (or 15 fps); forever if ``loop``, else once.

``pace='fast'``: every frame is delivered in order, none is dropped (the producer waits for the
consumer), ``Frame.t`` is the media time (starting at 0, or at ``start_s``; +loop offset when looping).
``pace='realtime'``: frames are released at their media timestamps with the latest-frame policy
(drops counted) and ``Frame.t`` is the monotonic time of release. Decoding happens in the capture
thread. Nothing is written to disk.

Fault injection (for tests, demos and the recovery path): ``inject_stall(s)``,
``inject_disconnect(s)`` (reads fail and reopening fails until ``s`` has passed),
``inject_lost_frames(k)`` (the next ``k`` frames vanish: gaps in ``Frame.n``), or the same as a
script in ``cfg.replay.faults`` (``"stall@5:3,disconnect@12:20,drop@2:5"`` - seconds after open).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np

from device.camera.base import FrameSource, to_rgb
from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}
DEFAULT_FPS = 15.0
LATE_RESYNC_S = 0.5  # realtime: later than this (after a stall, slow decode) -> re-anchor the clock


class VideoReader:
    """The one video decoder (replay camera, evaluations, benchmarks, tests): OpenCV/FFmpeg frames as
    RGB with media timestamps from CAP_PROP_POS_MSEC; a missing or non-increasing timestamp becomes
    the previous one + 1/fps (declared fps, else `fallback_fps`). Raises CameraError if it cannot open."""

    def __init__(self, path, fallback_fps: float = DEFAULT_FPS):
        self.path = Path(path)
        # one decoder thread: FFmpeg's default (one per core) keeps a frame context and reference frames per
        # thread (1.7 MB more here on 2 cores, more on a 4-core Pi) and decodes no faster for a 30 fps
        # replay that already has its own capture thread; H.264 decodes to the same frames either way
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if not self._cap.isOpened():
            raise CameraError("camera_unavailable", f"cannot open video {self.path.name}")
        declared = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.declared_fps = declared if 0 < declared < 1000 else 0.0
        self.gap = 1.0 / (self.declared_fps or fallback_fps)
        self._last_t: float | None = None

    def read(self):
        """(rgb, media_t) of the next frame, or None at the end."""
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if self._last_t is not None and (not np.isfinite(t) or t <= self._last_t):
            t = self._last_t + self.gap
        self._last_t = t
        return to_rgb(bgr), t

    def release(self) -> None:
        self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def decode_video(path, limit: int = 0, step: int = 1):
    """Yield (rgb, media_t) for every `step`-th frame of a video file (frames 0, step, 2*step, ...),
    at most `limit` of them if > 0."""
    with VideoReader(path) as r:
        n = i = 0
        while not (limit and n >= limit):
            got = r.read()
            if got is None:
                return
            if i % step == 0:
                yield got
                n += 1
            i += 1


def video_frame(path, index: int):
    """Frame `index` (0-based) of a video file as RGB, or None if the video is shorter or cannot
    be opened (CameraError is for the replay camera; callers here want a photo or nothing)."""
    try:
        for i, (rgb, _t) in enumerate(decode_video(path, limit=index + 1)):
            if i == index:
                return rgb
    except CameraError:
        return None
    return None


def parse_faults(script: str) -> list[tuple[float, str, float]]:
    """'stall@5:3,disconnect@12:20,drop@2:5' -> [(at_s, kind, arg)], sorted by time."""
    out = []
    for item in filter(None, (p.strip() for p in (script or "").split(","))):
        try:
            kind, rest = item.split("@", 1)
            at, _, arg = rest.partition(":")
            kind = kind.strip()
            if kind not in ("stall", "disconnect", "drop"):
                raise ValueError(kind)
            out.append((float(at), kind, float(arg) if arg else 1.0))
        except ValueError:
            raise CameraError("camera_unavailable",
                              f"replay.faults item {item!r}: expected kind@at_s[:arg], kind stall|disconnect|drop") from None
    return sorted(out)


def _folder_times(folder: Path, files: list[Path]) -> list[float] | None:
    """Timestamps for the folder's files from a frames.csv (folder or parent), or None."""
    for csv_path, clip in ((folder / "frames.csv", None), (folder.parent / "frames.csv", folder.name)):
        if not csv_path.is_file():
            continue
        try:
            with open(csv_path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        if not rows or "t_seconds" not in rows[0]:
            continue
        if "clip" in rows[0]:
            rows = [r for r in rows if r["clip"] == (clip or folder.name)]
        elif clip is not None:
            continue  # a parent's csv without a clip column is not about this folder
        by_key: dict[str, float] = {}
        try:
            for r in rows:
                t = float(r["t_seconds"])
                if r.get("file"):
                    by_key[Path(r["file"]).name] = t
                if r.get("frame") not in (None, ""):
                    by_key[str(int(r["frame"]))] = t
        except ValueError:
            continue
        times = []
        for f in files:
            t = by_key.get(f.name)
            if t is None and f.stem.isdigit():
                t = by_key.get(str(int(f.stem)))
            if t is None:
                break
            times.append(t)
        if len(times) == len(files):
            return times
        log.warning("replay: %s does not give a time for every image; using fps", csv_path)
    return None


class ReplaySource(FrameSource):
    """Replays recorded media through the live-camera contract. See the module docstring."""

    name = "replay"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.rc = cfg.replay
        self.lossless = self.rc.pace == "fast"
        self.path = Path(self.rc.path) if self.rc.path else None
        self._kind = ""
        self._files: list[Path] = []
        self._times: list[float] = []
        self._still: np.ndarray | None = None
        self._cap = None
        self._fps = DEFAULT_FPS
        self._reset_cursor()
        self._stall_until = 0.0
        self._disc_until = 0.0
        self._skip = 0
        self._script: list[tuple[float, str, float]] = parse_faults(getattr(self.rc, "faults", ""))
        self._script_t0 = 0.0
        self.lost_frames = 0  # frames removed by inject_lost_frames / drop faults

    def describe(self) -> str:
        kind = self._kind or "media"
        return f"replay {kind} {self.path.name if self.path else '(no path)'} {self.rc.pace}"

    # ------------------------------------------------------------ fault injection
    def inject_stall(self, seconds: float) -> None:
        """No frames for `seconds` (the 'device' stays open; reopening does not help)."""
        self._stall_until = max(self._stall_until, self._clock() + seconds)

    def inject_disconnect(self, seconds: float) -> None:
        """The device vanishes: reads raise now, reopen attempts fail until `seconds` have passed."""
        self._disc_until = max(self._disc_until, self._clock() + seconds)

    def inject_lost_frames(self, count: int) -> None:
        """The next `count` frames are decoded but never delivered (gaps in Frame.n)."""
        self._skip += int(count)

    def _run_script(self, now: float) -> None:
        while self._script and now - self._script_t0 >= self._script[0][0]:
            _, kind, arg = self._script.pop(0)
            log.info("replay: injected fault %s(%g)", kind, arg)
            {"stall": self.inject_stall, "disconnect": self.inject_disconnect,
             "drop": lambda a: self.inject_lost_frames(int(a))}[kind](arg)

    # ------------------------------------------------------------ media
    def _reset_cursor(self) -> None:
        self._idx = 0            # position in the current pass
        self._media_n = 0        # frames decoded over all passes (-> Frame.n)
        self._offset = 0.0       # media-time offset of the current pass (looping)
        self._last_media_t = None
        self._gap = 1.0 / DEFAULT_FPS
        self._anchor = None      # (monotonic, media_t) pairing for realtime pacing
        self._pass_frames = 0

    def _load(self) -> None:
        if self.path is None:
            raise CameraError("camera_unavailable", "replay.path is empty")
        p = self.path
        if not p.exists():
            raise CameraError("camera_unavailable", f"replay path not found: {p}")
        fps = self.rc.fps if self.rc.fps > 0 else 0.0
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not files:
                raise CameraError("camera_unavailable", f"replay folder has no images: {p}")
            times = None if fps else _folder_times(p, files)
            if times is not None and any(b < a for a, b in zip(times, times[1:])):
                # a frames.csv is the timeline: play by time, not by name (NUAA's _13.jpg sorts before _5.jpg)
                order = sorted(range(len(files)), key=lambda i: times[i])
                files, times = [files[i] for i in order], [times[i] for i in order]
            self._kind, self._files = "folder", files
            self._fps = fps or DEFAULT_FPS
            self._times = times if times is not None else [i / self._fps for i in range(len(files))]
        elif p.suffix.lower() in IMAGE_EXTS:
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise CameraError("camera_unavailable", f"cannot decode image {p.name}")
            self._kind, self._still = "image", to_rgb(img[..., :3] if img.ndim == 3 and img.shape[2] == 4 else img)
            self._fps = fps or DEFAULT_FPS
        else:
            self._kind = "video"
            self._open_video()
            self._fps = fps or self._cap.declared_fps or DEFAULT_FPS
        self._gap = 1.0 / self._fps

    def _open_video(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = VideoReader(self.path)

    def _next_media(self):
        """(rgb, media_t) of the next frame of this pass, or None at the end of the pass."""
        if self._kind == "video":
            self._cap.gap = self._gap
            return self._cap.read()
        if self._kind == "folder":
            if self._idx >= len(self._files):
                return None
            f = self._files[self._idx]
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise CameraError("camera_unavailable", f"cannot decode image {f.name}")
            if img.ndim == 3 and img.shape[2] == 4:
                img = img[..., :3]
            return to_rgb(img), self._times[self._idx]
        # single image
        if self._idx >= 1 and not self.rc.loop:
            return None
        return self._still.copy(), self._idx / self._fps

    def _next_from_start(self):
        """_next_media, with the first pass beginning at cfg.replay.start_s (evaluations start a session at
        several points of one clip: a customer steps up, an attacker starts the replay, whenever)."""
        start = self.rc.start_s
        while True:
            got = self._next_media()
            if got is None or start <= 0 or self._kind == "image" or self._offset or got[1] >= start:
                return got
            self._idx += 1

    def _rewind(self) -> bool:
        """End of a pass: start the next one (loop) or finish. False when finished."""
        if not self.rc.loop or self._pass_frames == 0:
            if self._pass_frames == 0 and self.rc.loop and self._media_n == 0:
                after = f" at or after start_s {self.rc.start_s:g} s" if self.rc.start_s else ""
                raise CameraError("camera_unavailable", f"replay has no frames{after}: {self.path.name}")
            return False
        self._offset = (self._last_media_t if self._last_media_t is not None else 0.0) + self._gap
        self._idx = 0
        self._pass_frames = 0
        if self._kind == "video":
            self._open_video()
        return True

    def iter_decoded(self, limit: int = 0):
        """Decode in the calling thread, no capture thread and no pacing: (rgb, media_t) pairs.

        For benchmarks (the no-overlap baseline) and offline tools; not while the source is open.
        """
        if self.is_open:
            raise RuntimeError("iter_decoded() on an open source")
        self._kind = ""
        self._reset_cursor()
        self._load()
        k = 0
        try:
            while not limit or k < limit:
                got = self._next_from_start()
                if got is None:
                    if not self._rewind():
                        return
                    continue
                self._idx += 1
                self._pass_frames += 1
                self._media_n += 1
                self._last_media_t = self._offset + got[1]
                k += 1
                yield got[0], self._last_media_t
        finally:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            self._kind = ""

    # ------------------------------------------------------------ hooks
    def _open_device(self) -> None:
        now = self._clock()
        if now < self._disc_until:
            raise CameraError("camera_unavailable", "replay: device disconnected (injected)")
        if not self._kind:  # first open since open(); later reopens keep the media position
            self._load()
            self._script_t0 = now

    def _close_device(self) -> None:
        pass  # a simulated close: the media position is kept, like a live camera's scene

    def open(self):
        if not self.is_open:
            self._kind = ""
            self._reset_cursor()
        return super().open()

    def close(self) -> None:
        super().close()
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._still = None
        self._kind = ""

    def _grab(self):
        now = self._clock()
        self._run_script(now)
        if now < self._disc_until:
            raise CameraError("camera_unavailable", "replay: device disconnected (injected)")
        if now < self._stall_until:
            self._stop.wait(min(0.05, self._stall_until - now))
            return None
        while True:
            got = self._next_from_start()
            if got is None:
                if not self._rewind():
                    self._set_eof()
                    return None
                continue
            rgb, t = got
            self._idx += 1
            self._pass_frames += 1
            n = self._media_n
            self._media_n += 1
            media_t = self._offset + t
            if self._last_media_t is not None and media_t > self._last_media_t:
                self._gap = min(media_t - self._last_media_t, 1.0)
            self._last_media_t = media_t
            if self._skip > 0:
                self._skip -= 1
                self.lost_frames += 1
                continue
            break
        if self.lossless:
            return rgb, media_t, n
        # realtime: release at the media timestamp
        now = self._clock()
        if self._anchor is None:
            self._anchor = (now, media_t)
        due = self._anchor[0] + (media_t - self._anchor[1])
        if now - due > LATE_RESYNC_S:
            self._anchor = (now, media_t)
            due = now
        while True:
            now = self.progress = self._clock()
            left = due - now
            if left <= 0:
                break
            if self._stop.wait(min(left, 0.05)):
                return None
            self._run_script(self._clock())
            if self._clock() < self._disc_until:
                raise CameraError("camera_unavailable", "replay: device disconnected (injected)")
        return rgb, None, n
