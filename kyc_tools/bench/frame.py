"""`kyc-edge bench [frame]`: the per-frame path, timed stage by stage, optionally beside MediaPipe.

    kyc-edge bench --frames ../shared/data/blink/demo_old.mp4 --threads 1 --model-set int8 --vs-mediapipe
    taskset -c 1 kyc-edge bench ...        # one pinned core: the Pi-class figure (see docs/performance.md)

It drives the daemon's own code: `VisionSuite` (the models the daemon loads, resolved for the model set
the way the daemon resolves them), `FaceTracker.observe` (detect or track from the previous frame's
landmarks, FaceMesh, pose, EAR, blink, PAD at its own rate) and `quality_crop` (align + quality gate).
Frames are decoded one at a time (never all held in memory) and nothing is written to disk.

Stages (median / p95 / mean ms, n = calls that ran), in wall time (`stages_ms`) and in process CPU time
(`stages_cpu_ms`: with --threads 1 on a pinned core, what the call costs without other processes' slices):
- decode: read + BGR->RGB of one frame (video: OpenCV/FFmpeg; folder: imread);
- detect, landmarks, iris, pad: per call, from thin timing wrappers on the suite's own model instances
  (detect runs only when not tracking: see `detect_ran_frames`; PAD runs on near-frontal frames at most
  every `pad_every_s`);
- detect_landmarks: per frame, the sum of the detect and landmarks calls on that frame (what the
  MediaPipe ratio compares with MediaPipe's whole FaceMesh graph);
- per_frame_path: per frame, `observe()` (detect or track + landmarks + iris + PAD + pose/EAR/blink);
- align, embed, align_embed: align per frame (inside quality_crop), embed per batch-of-2 call, timed after
  the frame pass on the aligned crops kept by the quality gate (the daemon embeds at decision time);
- per_frame_total: per frame, decode + observe + quality_crop.
`sustained_fps` = frames / wall time of the whole frame loop (decode included); `path_fps` = 1000 / mean
per_frame_path. Frame 0 (first-invoke warm-up) is left out of every statistic and shown on its own.

`two_thread` (kyc_tools/bench/pipeline.py): the replay camera's capture thread decoding while this thread runs
the real models on each newest frame, at pace fast, at the clip's own timestamps and at a fixed 30 fps:
frames processed/s, frames dropped, CPU share (both threads and the models thread alone).

With a full run (no --limit) it also measures, on the daemon's own parts: last challenge frame -> verdict
in the outbox (in-process sessions), start -> READY=1 and daemon RSS (a real `kyc-edge run` subprocess).
--vs-mediapipe steps MediaPipe's FaceMesh graph (.venv-mediapipe, mediapipe_peer.py) frame by frame
beside ours on the same frames, twice in one run: the FaceMesh graph (against our detect + FaceMesh) and the
attention mesh with iris (refine_landmarks=True, against our detect + FaceMesh + iris refiner).

Figures that cannot be measured in this tree are `null` with a `*_why` reason, never estimated.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

from dataclasses import replace
from pathlib import Path

import numpy as np

from device.notify import NotifyListener
from kyc_tools import paths as tool_paths

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}
STAGES = ("decode", "detect", "landmarks", "pad", "detect_landmarks", "per_frame_path",
          "align", "embed", "align_embed", "per_frame_total")
EMBED_MAX_CROPS = 16          # aligned crops kept for the embed stage (copies, wiped at the end)


# ------------------------------------------------------------------ small helpers
def stats(values) -> dict | None:
    """median / p95 / mean / min / max ms of a list (None when empty: the stage did not run)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None
    return {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "mean": round(float(v.mean()), 3), "min": round(float(v.min()), 3),
            "max": round(float(v.max()), 3), "n": int(v.size)}


def _proc_status_mb(pid: int | str = "self") -> dict:
    """VmRSS / VmHWM (peak RSS) and VmRSS's split, RssAnon (heap, arenas, packed weights: what only RAM
    holds) and RssFile (mapped libraries and model files: clean pages), in MB from /proc; {} where /proc
    is not there."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(val.split()[0]) / 1024.0, 1)
    except (OSError, ValueError):
        pass
    return out


def rss_mb(pid: int | str = "self") -> float | None:
    return _proc_status_mb(pid).get("VmRSS")


def proc_cpu_ms(pid: int) -> float | None:
    """utime + stime of a process (all its threads) in ms, from /proc/PID/stat (10 ms ticks)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def conditions() -> dict:
    """What the figures were measured under: cores allowed, load, CPU, runtimes."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = None
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, val = line.partition(":")
            if sep:
                info.setdefault(key.strip().lower(), val.strip())
    except OSError:
        pass
    # x86: "model name"; Raspberry Pi: "Model" (board) and "Hardware"; Jetson: "model name" or none
    cpu_model = info.get("model name") or info.get("hardware")
    board = info.get("model") if info.get("model", "").lower().startswith(("raspberry", "nvidia", "jetson")) else None
    flags = set(info.get("flags", info.get("features", "")).split())
    simd = sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "neon", "asimd", "asimddp", "f16c"})
    import cv2
    from device.vision import runtime
    rt = runtime.runtime_name()
    try:
        from importlib.metadata import version
        rt_ver = version(rt)
    except Exception:  # noqa: BLE001 - only informative
        rt_ver = None
    return {"cpu_affinity": cpus, "cpu_count": os.cpu_count(), "cpu_model": cpu_model, "board": board,
            "simd": simd,
            "machine": platform.machine(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "runtime": f"{rt} {rt_ver}" if rt_ver else rt, "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(), "numpy": np.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


# ------------------------------------------------------------------ frames
def frame_files(path: Path) -> list[Path]:
    """Image files of a folder, sorted by name (recursing into sub-folders when the top has none)."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return files


def iter_frames(path: Path, limit: int = 0):
    """Yield (rgb, t_seconds, decode wall ms, decode CPU ms) one frame at a time. Video: media time; folder: 15 fps."""
    import cv2
    n = 0
    if path.is_dir():
        for i, f in enumerate(frame_files(path)):
            if limit and n >= limit:
                return
            t0, c0 = time.perf_counter(), time.process_time()
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield rgb, i / 15.0, (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0
            n += 1
        return
    from device.camera.replay import VideoReader
    from device.errors import CameraError
    try:
        reader = VideoReader(path)
    except CameraError:
        raise ValueError(f"cannot open {path} as a video") from None
    try:
        while not (limit and n >= limit):
            t0, c0 = time.perf_counter(), time.process_time()
            got = reader.read()
            if got is None:
                return
            rgb, t = got
            dt, dc = (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0
            yield rgb, t, dt, dc
            n += 1
    finally:
        reader.release()


# ------------------------------------------------------------------ models
def default_models_dir() -> Path:
    from device.models import find_model_dir
    return find_model_dir()


def _chip2(rgb: np.ndarray, landmarks: np.ndarray, chip_ms: list) -> np.ndarray:
    from device.vision import embed2
    from device.vision.align import mesh_points
    c0 = time.thread_time()
    chip = embed2.face_chip(rgb, mesh_points(landmarks))
    chip_ms.append((time.thread_time() - c0) * 1000.0)
    return chip


def second_embedder_stage(emb, chips: list, chip_ms: list, reps: int = 5) -> dict:
    """The second embedder (match.second_embedder, issue 18; `emb` = the suite's, loaded with the other
    models), as a session runs it: the card chip with its mirror (one call, at card read) and the live top
    chips (one call, at the decision), thread CPU ms per call, on chips made from this run's tracked frames.
    None-valued with a reason when the suite has none."""
    try:
        if emb is None or len(chips) < 2:
            why = "no embedder2 model (scripts/build-dlib-embedder)" if emb is None \
                else "fewer than 2 tracked frames passed the quality gate"
            return {"card_call_ms": None, "live_call_ms": None, "per_session_ms": None, "why": why}
        emb.embed_card(chips[0]).wipe()                 # warm-up, as the daemon's first session is not timed
        card, live = [], []
        for _ in range(reps):
            c0 = time.thread_time()
            emb.embed_card(chips[0]).wipe()
            c1 = time.thread_time()
            emb.embed(chips[1:3]).wipe()
            c2 = time.thread_time()
            card.append((c1 - c0) * 1000.0)
            live.append((c2 - c1) * 1000.0)
        emb.wipe()
        sc, sl, sk = stats(card), stats(live), stats(chip_ms)
        return {"card_call_ms": sc, "live_call_ms": sl, "chip_ms": sk, "live_chips": len(chips[1:3]),
                "per_session_ms": round(sc["median"] + sl["median"] + sk["median"] * 3, 3),
                "what": "thread CPU ms: card chip + mirror (one call, at card read), the live top chips (one "
                        "call, at the decision), a chip per kept frame (3 assumed: match.top_k)"}
    finally:
        for c in chips:
            c.fill(0)


def resolve_models(models_dir: Path, model_set: str) -> tuple[Path, dict, list[str]]:
    """(dir the suite loads from, role -> file, roles that fell back to float).

    int8 builds land in models/build (scripts/build-models); when the float files live elsewhere the
    two are overlaid in a temporary folder of symlinks so the daemon's own resolve() picks them."""
    from device import models as models_mod
    load_dir = models_dir
    if model_set == "int8":
        build = tool_paths.model_build_dir()
        built = {e.file for e in models_mod.entries() if e.precision == "int8"}
        extra = [build / f for f in built if build and not (models_dir / f).exists() and (build / f).exists()]
        if extra:
            import atexit
            import shutil
            import tempfile
            load_dir = Path(tempfile.mkdtemp(prefix="kyc-bench-models-"))
            atexit.register(shutil.rmtree, load_dir, True)     # symlinks only
            for p in list(models_dir.glob("*.tflite")) + extra:
                (load_dir / p.name).symlink_to(p.resolve())
    paths = models_mod.resolve(load_dir, model_set)
    int8_files = {e.file for e in models_mod.entries() if e.precision == "int8"}
    fallback = [r for r, p in paths.items() if model_set == "int8" and p.name not in int8_files]
    return load_dir, {r: p.name for r, p in paths.items()}, fallback


def build_suite(models_dir: Path, model_set: str, threads: int):
    from device import wiring
    from device.config import from_dict
    cfg = from_dict({})
    cfg = replace(cfg, models=replace(cfg.models, dir=str(models_dir), set=model_set, threads=threads),
                  # the frame pass times the frame path alone, in process CPU time: no ahead worker thread
                  # in it (its cost is the session block's `embed_ahead`)
                  match=replace(cfg.match, embed_ahead=False))
    return cfg, wiring.vision(cfg, models_dir)


# ------------------------------------------------------------------ our per-frame pass
class _Clock:
    """Wall (perf_counter) and CPU (process_time) ms of each call of a stage, per frame.

    With --threads 1 on one pinned core the CPU figure is what the call would take on an idle core: time
    slices other processes took are not in it (they are in the wall figure). With more threads the CPU
    figure is the sum over XNNPACK's threads, not a latency."""

    def __init__(self):
        self.frame: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.frame.setdefault(name, []).append(((time.perf_counter() - w0) * 1000.0,
                                                        (time.process_time() - c0) * 1000.0))
        return timed

    def take(self) -> dict[str, list[tuple[float, float]]]:
        out, self.frame = self.frame, {}
        return out


def run_ours(frames: Path, limit: int, models_dir: Path, model_set: str, threads: int, peers=()) -> dict:
    """Our pass. Each of `peers` (LockstepPeers) processes each frame right after ours, in turn, on the same
    core."""
    load_dir, files, fallback = resolve_models(models_dir, model_set)
    rss_before = rss_mb()
    t0 = time.perf_counter()
    cfg, suite = build_suite(load_dir, model_set, threads)
    load_ms = (time.perf_counter() - t0) * 1000.0
    rss_loaded = rss_mb()
    from device.memory import release_file_pages
    release_file_pages()        # as the daemon does once its models are loaded (device/memory.py)
    rss_released = rss_mb()
    tr = suite.tracker
    best = suite.best_frames()
    # thin timing wrappers on this suite's own instances (same calls, same arguments)
    clk = _Clock()
    tr.detector.detect = clk.wrap("detect", tr.detector.detect)
    tr.landmarker.detect = clk.wrap("landmarks", tr.landmarker.detect)
    if tr.pad is not None:
        tr.pad.score = clk.wrap("pad", tr.pad.score)
    if tr.eyes is not None:
        tr.eyes.ear = clk.wrap("iris", tr.eyes.ear)
    import device.vision.quality as quality_mod
    orig_align = quality_mod.align_face
    quality_mod.align_face = clk.wrap("align", orig_align)
    keys = ("decode", "detect", "landmarks", "pad", "iris", "detect_landmarks", "per_frame_path", "align",
            "per_frame_total")
    wall = {k: [] for k in keys}
    cpu = {k: [] for k in keys}
    first = None
    crops: list[np.ndarray] = []
    chips2: list = []           # second-embedder face chips (match.second_embedder), at most 3
    chip_ms: list[float] = []
    detect_frames = faces = n = 0
    peer_wait = 0.0
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for rgb, t, dec_ms, dec_cpu in iter_frames(frames, limit):
            f0, c0 = time.perf_counter(), time.process_time()
            obs = tr.observe(rgb, t)
            f1, c1 = time.perf_counter(), time.process_time()
            crop = suite.quality_crop(rgb, obs, best)
            f2, c2 = time.perf_counter(), time.process_time()
            calls = clk.take()
            row_w = {"decode": [dec_ms], "per_frame_path": [(f1 - f0) * 1000.0],
                     "per_frame_total": [dec_ms + (f2 - f0) * 1000.0]}
            row_c = {"decode": [dec_cpu], "per_frame_path": [(c1 - c0) * 1000.0],
                     "per_frame_total": [dec_cpu + (c2 - c0) * 1000.0]}
            for k, v in calls.items():
                row_w[k] = [x[0] for x in v]
                row_c[k] = [x[1] for x in v]
            row_w["detect_landmarks"] = [sum(row_w.get("detect", [])) + sum(row_w.get("landmarks", []))]
            row_c["detect_landmarks"] = [sum(row_c.get("detect", [])) + sum(row_c.get("landmarks", []))]
            if n == 0:
                first = {k: round(sum(v), 3) for k, v in row_w.items()}
            else:
                for k, v in row_w.items():
                    wall[k] += v
                for k, v in row_c.items():
                    cpu[k] += v
            detect_frames += int(obs.detected)
            faces += int(obs.has_face)
            if crop is not None and len(crops) < EMBED_MAX_CROPS:
                crops.append(crop.copy())
            if crop is not None and obs.landmarks is not None and len(chips2) < 3:
                chips2.append(_chip2(rgb, obs.landmarks, chip_ms))
            rgb.fill(0)
            n += 1
            if peers:
                w0 = time.perf_counter()
                if n > 1:
                    no_pad = "pad" not in calls
                    mine = ((row_w["detect_landmarks"][0], row_c["detect_landmarks"][0]),
                            (row_w["per_frame_path"][0], row_c["per_frame_path"][0]) if no_pad else None,
                            (row_w["detect_landmarks"][0] + sum(row_w.get("iris", [])),
                             row_c["detect_landmarks"][0] + sum(row_c.get("iris", []))))
                else:
                    mine = (None, None, None)
                for peer in peers:
                    peer.step(*mine)
                peer_wait += time.perf_counter() - w0
        wall_s = time.perf_counter() - wall0 - peer_wait
        cpu_s = time.process_time() - cpu0
    finally:
        quality_mod.align_face = orig_align
    if n == 0:
        raise ValueError(f"no frames decoded from {frames}")
    embed_w, embed_c = [], []
    for i in range(0, max(len(crops) - 1, 0), 2):
        e0, c0 = time.perf_counter(), time.process_time()
        res = suite.embedder.embed(crops[i], crops[i + 1])
        embed_w.append((time.perf_counter() - e0) * 1000.0)
        embed_c.append((time.process_time() - c0) * 1000.0)
        res.wipe()
    for c in crops:
        c.fill(0)
    best.wipe()
    wall["embed"], cpu["embed"] = embed_w, embed_c
    end_st = _proc_status_mb()
    rss_end, rss_peak = end_st.get("VmRSS"), peak_rss_mb()     # the second embedder is in models_loaded already
    second = second_embedder_stage(suite.embedder2, chips2, chip_ms)
    # what timing it added on top of the peak (its model is loaded with the suite, so in models_loaded)
    second["rss_added_mb"] = round(peak_rss_mb() - rss_peak, 1) if second.get("per_session_ms") else None

    def table(src: dict) -> dict:
        st = {k: stats(src.get(k, [])) for k in STAGES if k != "align_embed"}
        if tr.pad is None:
            st["pad"] = None
        if st["align"] and st["embed"]:
            st["align_embed"] = {"median": round(st["align"]["median"] + st["embed"]["median"], 3),
                                 "p95": round(st["align"]["p95"] + st["embed"]["p95"], 3),
                                 "note": "align per frame + one pair embedded (one call at batch 2, two at batch 1; medians / p95s added)"}
        else:
            st["align_embed"] = None
        if src.get("iris"):
            st["iris"] = stats(src["iris"])
        return {k: st.get(k) for k in list(STAGES) + (["iris"] if "iris" in st else [])}

    st = table(wall)
    st_cpu = table(cpu)
    stage_calls = {k: len(wall.get(k, [])) for k in ("detect", "landmarks", "pad", "iris")}
    path_mean = st["per_frame_path"]["mean"] if st["per_frame_path"] else None
    return {
        "frames": n, "frames_with_face": faces, "detect_ran_frames": detect_frames,
        "stage_calls": stage_calls, "embed_calls": len(embed_w), "second_embedder": second,
        "model_set": model_set, "threads": threads, "models_dir": str(models_dir), "models": files,
        "int8_fallback_to_float": fallback, "model_load_ms": round(load_ms, 1),
        "stages_ms": st,
        "stages_cpu_ms": st_cpu,
        "first_frame_ms": first,
        "sustained_fps": round((n - 1) / max(wall_s - (first or {}).get("per_frame_total", 0) / 1000.0, 1e-9), 2)
        if n > 1 else None,
        "path_fps": round(1000.0 / path_mean, 1) if path_mean else None,
        # CPU time this process got / wall time of our frame loop: ~1.0 = the core was ours; lower = other
        # processes on the same core took turns (the figures above then include their time slices)
        "cpu_share": round(cpu_s / max(wall_s, 1e-9), 3),
        "rss_mb": {"before_models": rss_before, "models_loaded": rss_loaded,
                   "start_up_file_pages_released": rss_released, "end": rss_end,
                   "peak": rss_peak,     # the default model set; the second embedder's share is its own
                   "end_anon_file": [end_st.get("RssAnon"), end_st.get("RssFile")]},
    }


# ------------------------------------------------------------------ MediaPipe peer
def mediapipe_python() -> Path | None:
    """$KYC_EDGE_MEDIAPIPE_PYTHON if set (only that), else .venv-mediapipe/bin/python; None if missing."""
    cand = tool_paths.mediapipe_python()
    return cand if cand and cand.is_file() and os.access(cand, os.X_OK) else None


class LockstepPeer:
    """MediaPipe's FaceMesh graph in its own venv, stepped frame by frame beside our pass.

    The peer decodes the same frames itself, then waits on stdin; after we finish frame i we let it
    process frame i and read back its time. Both processes share this process's CPU affinity and never
    run at the same moment, so a load spike on the shared machine hits both sides of a frame alike.
    The ratio is taken per frame (ours / theirs) and summarised (median, and the ratio of the means)."""

    def __init__(self, frames: Path, limit: int, refine: bool = False):
        """`refine`: MediaPipe's attention mesh (refine_landmarks=True, with iris), the like-for-like peer
        for our FaceMesh + iris refiner (ratio detect_landmarks_iris_cpu)."""
        py = mediapipe_python()
        if py is None:
            raise RuntimeError("no .venv-mediapipe (run scripts/bench-mediapipe-venv, or set KYC_EDGE_MEDIAPIPE_PYTHON)")
        script = Path(__file__).with_name("mediapipe_peer.py")
        cmd = [str(py), str(script), "--lockstep", "--limit", str(limit)]
        self.refine = refine
        if self.refine:
            cmd.append("--refine")
        self._list_file = None
        if frames.is_dir():
            import tempfile
            fd, self._list_file = tempfile.mkstemp(prefix="kyc-bench-frames-", suffix=".txt")
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(str(p) for p in frame_files(frames)))
            cmd += ["--list", self._list_file]
        else:
            cmd += ["--video", str(frames)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.setdefault("GLOG_minloglevel", "2")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tempfile
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, bufsize=1, env=env)
        self.pairs: list[tuple[float, float]] = []
        self.path_pairs: list[tuple[float, float]] = []     # our whole observe() on frames without PAD
        self.cpu_pairs: list[tuple[float, float]] = []      # the same pairs in CPU time
        self.path_cpu_pairs: list[tuple[float, float]] = []
        self.theirs_cpu: list[float] = []
        self.dli_pairs: list[tuple[float, float]] = []      # detect + landmarks + iris refiner
        self.dli_cpu_pairs: list[tuple[float, float]] = []
        self.theirs: list[float] = []
        self.face_frames = 0
        self.error: str | None = None

    def step(self, ours, ours_path=None, ours_dli=None) -> None:
        """Let the peer process the next frame. `ours` / `ours_path`: (wall ms, CPU ms) of our detect+landmarks
        and of our whole observe() (None on frames with PAD) for that same frame."""
        if self.error:
            return
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            d = json.loads(line)
        except (OSError, ValueError) as e:
            self.error = f"mediapipe peer stopped: {type(e).__name__}"
            return
        self.face_frames += int(d["face"])
        if d["i"] > 0:
            self.theirs.append(d["ms"])
            self.theirs_cpu.append(d["cpu_ms"])
            if ours is not None:
                self.pairs.append((ours[0], d["ms"]))
                self.cpu_pairs.append((ours[1], d["cpu_ms"]))
            if ours_dli is not None:
                self.dli_pairs.append((ours_dli[0], d["ms"]))
                self.dli_cpu_pairs.append((ours_dli[1], d["cpu_ms"]))
            if ours_path is not None:
                self.path_pairs.append((ours_path[0], d["ms"]))
                self.path_cpu_pairs.append((ours_path[1], d["cpu_ms"]))

    def finish(self, timeout: float = 60.0) -> dict:
        summary = None
        try:
            self.proc.stdin.close()
            rest = self.proc.stdout.read()
            self.proc.wait(timeout=timeout)
            lines = [ln for ln in rest.strip().splitlines() if ln.startswith("{") and '"peer"' in ln]
            summary = json.loads(lines[-1]) if lines else None
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            self.error = self.error or f"mediapipe peer did not finish: {type(e).__name__}"
            self.proc.kill()
        finally:
            if self._list_file:
                os.unlink(self._list_file)
        if summary is None and not self.error:
            self._err.seek(0)
            self.error = f"mediapipe peer exit {self.proc.returncode}: {self._err.read().decode(errors='replace')[-400:]}"
        self._err.close()
        out = summary or {}
        if self.error:
            out["error"] = self.error
        out["process_ms"] = stats(self.theirs)
        out["process_cpu_ms"] = stats(self.theirs_cpu)
        return out

    @staticmethod
    def _ratio(pairs) -> dict | None:
        if not pairs:
            return None
        o = np.array([p[0] for p in pairs])
        t = np.array([p[1] for p in pairs])
        r = o / np.maximum(t, 1e-6)
        return {"median_of_medians": round(float(np.median(o) / np.median(t)), 3),
                "mean_of_means": round(float(o.mean() / t.mean()), 3),
                "per_frame_median": round(float(np.median(r)), 3),
                "per_frame_p25_p75": [round(float(np.percentile(r, 25)), 3), round(float(np.percentile(r, 75)), 3)],
                "ours_median_ms": round(float(np.median(o)), 3), "theirs_median_ms": round(float(np.median(t)), 3),
                "paired_frames": len(pairs)}

    def ratios(self) -> dict | None:
        if not self.pairs:
            return None
        return {"wall": self._ratio(self.pairs), "cpu": self._ratio(self.cpu_pairs),
                "whole_observe_no_pad_wall": self._ratio(self.path_pairs),
                "whole_observe_no_pad_cpu": self._ratio(self.path_cpu_pairs),
                "detect_landmarks_iris_cpu": self._ratio(self.dli_cpu_pairs) if self.refine else None,
                "peer_refine_landmarks": self.refine}


# ------------------------------------------------------------------ session + daemon figures
# the default clip: $KYC_EDGE_SHARED/data/blink (a checkout: ../shared); a placeholder path otherwise
BLINK_VIDEO = tool_paths.shared_path("data", "blink", "demo_old.mp4") or Path("$KYC_EDGE_SHARED/data/blink/demo_old.mp4")


def _blink_card_photo(video: Path) -> np.ndarray:
    """The blink video's subject as a card photo (a head-and-shoulders crop of frame 60), as tests/faces.py."""
    from device.camera.replay import decode_video
    got = list(decode_video(video, limit=61))
    if len(got) < 61:
        raise ValueError(f"{video}: fewer than 61 frames")
    return np.ascontiguousarray(got[60][0][180:620, 470:830])


def session_latency(models_dir: Path, model_set: str, threads: int, runs: int = 3, embed_ahead: bool = True) -> dict:
    """Last challenge frame -> verdict signed and in the durable outbox, from `Session.last_challenge_to_stored_ms`.

    In process, on the daemon's own parts: VisionSuite, replay camera (pace fast) on the blink video, a
    fabricated resident card with the subject's photo, and the daemon's sink (Ed25519 sign + SQLite outbox put,
    synchronous=FULL) in a temporary state dir. One blink challenge; `runs` sessions on one suite.
    `embed_ahead`: match.embed_ahead (False: the synchronous decision, for the CPU comparison)."""
    import tempfile
    from device import config as C
    from device import wiring
    from device.link.outbox import Outbox
    from device.offline import fabricated_card
    from device.session import Session
    if not BLINK_VIDEO.is_file():
        return {"last_challenge_to_outbox_ms": None, "last_challenge_to_outbox_why": f"{BLINK_VIDEO} missing"}
    load_dir, _, _ = resolve_models(models_dir, model_set)
    cfg = wiring.offline_replay(C.from_dict({}), BLINK_VIDEO, **{
        "models.dir": str(load_dir), "models.set": model_set, "models.threads": threads,
        "match.embed_ahead": embed_ahead})
    suite = wiring.vision(cfg, load_dir)
    photo = _blink_card_photo(BLINK_VIDEO)
    lat, sink_ms, timings, results = [], [], [], []
    match_ms, decide_ms, embed_calls = [], [], []
    sess_cpu, worker_calls, worker_cpu = [], [], []
    from device.liveness.check import LivenessCheck
    orig_match, orig_decide, orig_embed = suite.match, LivenessCheck.decide, suite.embedder.embed
    calls = [0]

    def counted_embed(a, b):
        calls[0] += 1
        return orig_embed(a, b)

    def timed_match(*a, **k):
        calls[0] = 0
        m0 = time.perf_counter()
        try:
            return orig_match(*a, **k)
        finally:
            match_ms.append((time.perf_counter() - m0) * 1000.0)
            embed_calls.append(calls[0])

    def timed_decide(*a, **k):
        d0 = time.perf_counter()
        try:
            return orig_decide(*a, **k)
        finally:
            decide_ms.append((time.perf_counter() - d0) * 1000.0)

    suite.match, suite.embedder.embed = timed_match, counted_embed
    LivenessCheck.decide = timed_decide       # restored below
    with tempfile.TemporaryDirectory(prefix="kyc-bench-state-") as state:
        signer = wiring.signer(state)
        outbox = Outbox(Path(state) / "outbox.sqlite", 1000)
        try:
            for _ in range(runs):
                def sink(v):
                    s0 = time.perf_counter()
                    outbox.put(signer.sign(v))
                    sink_ms.append((time.perf_counter() - s0) * 1000.0)
                ah = suite.ahead
                w0 = (ah.calls, ah.cpu_ms) if ah is not None else (0, 0.0)
                with wiring.camera(cfg) as cam:
                    sess = Session(cfg, reader=None, camera=cam, vision=suite, sink=sink, challenges=["blink"])
                    c0 = time.process_time()
                    v = sess.run(card=fabricated_card(photo.copy()))
                    sess_cpu.append((time.process_time() - c0) * 1000.0)
                if ah is not None:
                    worker_calls.append(ah.calls - w0[0])
                    worker_cpu.append(ah.cpu_ms - w0[1])
                results.append(v["result"] + (":" + ",".join(v["reasons"]) if v["reasons"] else ""))
                timings.append({k: round(float(x), 1) for k, x in v["timings_ms"].items()})
                if sess.last_challenge_to_stored_ms is not None:
                    lat.append(sess.last_challenge_to_stored_ms)
        finally:
            outbox.close()
            LivenessCheck.decide = orig_decide
    out = {"last_challenge_to_outbox_ms": stats(lat), "sessions": runs, "results": results,
           "breakdown_ms": {"match_embeddings": stats(match_ms), "embed_calls_per_match": embed_calls,
                            "decide": stats(decide_ms), "sink_sign_outbox_put": stats(sink_ms)},
           "verdict_timings_ms": timings,
           "embed_ahead": {"on": embed_ahead, "worker_embed_calls": worker_calls, "worker_cpu_ms": stats(worker_cpu),
                           "session_cpu_ms": stats(sess_cpu),
                           "what": "match.embed_ahead (device/vision/ahead.py): embedder calls and thread CPU time of "
                                   "the worker per session; session_cpu_ms: process CPU time (all threads) of the "
                                   "whole Session.run, capture included"},
           "what": "Session.last_challenge_to_stored_ms: monotonic clock from the frame that passed the last "
                   "challenge to the signed verdict committed in the outbox (decision incl. top-k + identity "
                   "embeddings, verdict build, sign, SQLite put)"}
    if not lat:
        out["last_challenge_to_outbox_why"] = f"no session passed its challenge ({results})"
    return out


def daemon_env(env: dict) -> dict:
    """The environment of the bench's `kyc-edge run` subprocess: `env` plus the daemon's malloc settings
    (device.memory.MALLOC_ENV, which systemd/kyc-edge.service sets as Environment= lines), so the daemon
    RSS measured here is the daemon the unit runs (tests/test_daemon_memory.py)."""
    from device import memory
    return tool_paths.child_env(memory.daemon_env(env))


def daemon_figures(models_dir: Path, model_set: str, threads: int, starts: int = 3) -> dict:
    """`kyc-edge run` as a real subprocess: mosquitto, the pty card-reader simulator, the replay camera on
    the blink video, our own NOTIFY_SOCKET. Start (Popen) -> READY=1, `starts` times; RSS idle after READY
    and through one session (a card with the subject's photo goes in; sampled every 20 ms until the verdict
    arrives over MQTT)."""
    import tempfile
    from device.cardreader.photo import card_photo_jpeg
    from device.cardreader.simulator import FakeCard, Simulator
    from device.demo import VerdictSubscriber, write_config
    from device.localbroker import LocalBroker
    if not BLINK_VIDEO.is_file():
        why = f"{BLINK_VIDEO} missing"
        return {"start_to_ready_ms": None, "start_to_ready_why": why, "daemon_rss_mb": None, "daemon_rss_why": why}
    load_dir, _, _ = resolve_models(models_dir, model_set)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kyc-bench-daemon-") as tmp:
        tmp = Path(tmp)
        try:
            broker = LocalBroker(tmp).start()
            url = broker.url
        except RuntimeError as e:
            why = f"no broker: {e}"
            return {"start_to_ready_ms": None, "start_to_ready_why": why, "daemon_rss_mb": None, "daemon_rss_why": why}
        sim = Simulator(card=None)
        port = sim.start_pty()
        sub = VerdictSubscriber(url, "kyc/v1/+/+/verdict")
        procs = []
        try:
            cfg = {
                "device": {"id": "counter-bench", "site": "bench", "state_dir": str(tmp / "state")},
                "camera": {"backend": "replay", "stall_s": 2.0, "lost_s": 5.0},
                "camera.replay": {"path": str(BLINK_VIDEO), "pace": "realtime", "loop": True},
                "reader": {"port": port, "poll_s": 0.1, "photo_decoder": "auto"},
                "models": {"dir": str(load_dir), "set": model_set, "threads": threads},
                "liveness": {"challenges": ["blink"], "count": 1, "challenge_timeout_s": 8.0},
                "session": {"capture_timeout_s": 30.0},
                "mqtt": {"url": url, "connect_timeout_s": 5.0},
                "log": {"level": "warning", "target": "stderr"},
                "consent": {"required": False},      # no customer to agree: the bench drives sessions
            }
            cfg_path = write_config(tmp / "config.toml", cfg)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")}
            ready_ms, ready_cpu_ms, idle_rss = [], [], None
            session_rss: list[float] = []
            session_max: dict = {}
            hwm = None
            for i in range(starts):
                ns = NotifyListener(tmp / f"notify{i}.sock")
                env["NOTIFY_SOCKET"] = ns.path
                log = open(tmp / f"daemon{i}.log", "wb")
                t0 = time.monotonic()
                proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg_path)],
                                        env=daemon_env(env), stdout=log, stderr=log)
                procs.append(proc)
                t_ready = ns.first("READY=1", 60.0, alive=lambda: proc.poll() is None)
                if t_ready is None:
                    log.close()
                    tail = (tmp / f"daemon{i}.log").read_text(errors="replace")[-300:]
                    out["start_to_ready_why"] = (f"daemon exited {proc.returncode} before READY=1" if proc.poll() is not None
                                                 else "no READY=1 within 60 s") + f"; log tail: {tail}"
                    ns.close()
                    break
                ready_ms.append((t_ready - t0) * 1000.0)
                c = proc_cpu_ms(proc.pid)      # read right after READY=1: CPU the daemon used to get there
                if c is not None:
                    ready_cpu_ms.append(c)
                # where the start-up time goes: each STATUS= step, ms after Popen
                out.setdefault("start_status_steps_ms", []).append(
                    [[round((t - t0) * 1000.0), m[7:40]] for t, m in ns.timed if m.startswith(("STATUS=", "READY="))])
                if i == starts - 1:
                    time.sleep(2.0)            # idle: camera running, no session
                    idle_rss = _proc_status_mb(proc.pid)
                    photo = _blink_card_photo(BLINK_VIDEO)
                    n0 = len(sub.payloads)
                    sim.insert(FakeCard.resident(photo_bytes=card_photo_jpeg(photo)))
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and len(sub.payloads) <= n0 and proc.poll() is None:
                        st = _proc_status_mb(proc.pid)
                        r = st.get("VmRSS")
                        if r:
                            session_rss.append(r)
                            if r >= session_max.get("VmRSS", 0):
                                session_max = st
                        time.sleep(0.02)
                    hwm = _proc_status_mb(proc.pid).get("VmHWM")
                    sim.remove()
                    got = [p for p in sub.payloads[n0:] if "verdict" in p]
                    out["session_verdict"] = (got[0]["verdict"]["result"] + ":" + ",".join(got[0]["verdict"]["reasons"])
                                              if got else "no verdict within 60 s")
                    if got:
                        out["session_verdict_timings_ms"] = got[0]["verdict"].get("timings_ms")
                proc.send_signal(__import__("signal").SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
                ns.close()
            out["start_to_ready_ms"] = stats(ready_ms)
            out["start_to_ready_runs_ms"] = [round(x, 1) for x in ready_ms]
            out["start_to_ready_cpu_ms"] = stats(ready_cpu_ms)
            out["start_to_ready_cpu_what"] = ("CPU time (user+sys, 10 ms ticks) the daemon had used when READY=1 "
                                              "arrived: the start-up cost without other load's time slices")
            out["start_to_ready_what"] = ("Popen of `python -m device.cli run` -> READY=1 on our NOTIFY_SOCKET; models, "
                                          "broker (local mosquitto) and the pty reader available")
            idle_rss = idle_rss or {}
            out["daemon_rss_mb"] = {"idle_after_ready": idle_rss.get("VmRSS"),
                                    "in_session_max": max(session_rss) if session_rss else None,
                                    "peak_vmhwm": hwm,
                                    # VmRSS = anon + file: anon is what only RAM holds; file is mapped
                                    # libraries and model files (clean pages the kernel can drop and re-read)
                                    "idle_anon_file": [idle_rss.get("RssAnon"), idle_rss.get("RssFile")],
                                    "in_session_max_anon_file": [session_max.get("RssAnon"),
                                                                 session_max.get("RssFile")]}
            from device.memory import MALLOC_ENV
            out["daemon_env"] = dict(MALLOC_ENV)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            sub.close()
            sim.stop()
            broker.stop()
    return out


# ------------------------------------------------------------------ entry point
def bench_frames(args) -> dict:
    """`kyc-edge bench frame`: one JSON-able dict (see the module doc)."""
    t_start = time.perf_counter()
    frames = Path(args.frames) if getattr(args, "frames", None) else BLINK_VIDEO
    if not frames.exists():
        raise SystemExit(f"bench: --frames {frames} does not exist")
    models_dir = Path(args.models_dir) if getattr(args, "models_dir", None) else default_models_dir()
    threads = int(getattr(args, "threads", 1) or 1)
    model_set = getattr(args, "model_set", None) or "float"
    limit = int(getattr(args, "limit", 0) or 0)
    out = {"bench": "frame", "frames_source": str(frames), "limit": limit or None,
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else None,
           "conditions_start": conditions()}
    peers: list[LockstepPeer] = []
    if getattr(args, "vs_mediapipe", False):
        try:
            # the FaceMesh graph, then the attention mesh with iris: both after each of our frames
            for refine in (False, True):
                peers.append(LockstepPeer(frames, limit, refine=refine))
        except RuntimeError as e:
            for p in peers:
                p.finish()
            peers = []
            out["mediapipe"] = {"error": str(e)}
    try:
        ours = run_ours(frames, limit, models_dir, model_set, threads, peers)
    finally:
        finished = [p.finish() for p in peers]
    out["ours"] = ours
    # capture thread + models thread, real models, replay camera at pace fast / realtime / 30 fps (issue 17)
    from kyc_tools.bench import pipeline
    out["two_thread"] = pipeline.two_thread(frames, models_dir, model_set, threads, limit)
    st = ours["stages_ms"]
    sc = ours["stages_cpu_ms"]
    out["summary"] = {
        "per_frame_path_median_ms": st["per_frame_path"]["median"] if st["per_frame_path"] else None,
        "per_frame_path_p95_ms": st["per_frame_path"]["p95"] if st["per_frame_path"] else None,
        "per_frame_path_cpu_median_ms": sc["per_frame_path"]["median"] if sc["per_frame_path"] else None,
        "per_frame_path_cpu_p95_ms": sc["per_frame_path"]["p95"] if sc["per_frame_path"] else None,
        "sustained_fps": ours["sustained_fps"],
        "peak_rss_mb": ours["rss_mb"]["peak"],
        "cpu_share": ours["cpu_share"],
        "vs_mediapipe_ratio": None,
        "vs_mediapipe_iris_ratio_cpu": None,
        "two_thread_fps": {r["pace"]: r.get("processed_fps") for r in out["two_thread"]["rows"]},
        "two_thread_dropped": {r["pace"]: r.get("dropped") for r in out["two_thread"]["rows"]},
    }
    if peers:
        plain, refine = peers
        out["mediapipe"], out["mediapipe_refine"] = finished
        r = plain.ratios()
        if r:
            r["what"] = ("ours / MediaPipe, < 1 = ours faster. ours: detect+landmarks per frame (tracking, as the "
                         "daemon runs it); theirs: FaceMesh graph process() per frame (detection or tracking, "
                         "FaceMesh, results to Python). Same frames, interleaved frame by frame in one run on the "
                         "same CPU affinity. wall = perf_counter; cpu = process CPU time (all threads), robust to "
                         "other load on a pinned core. whole_observe_no_pad: our entire observe() (also head pose, "
                         "EAR, blink) on frames where PAD did not run")
            out["vs_mediapipe"] = r
            out["summary"]["vs_mediapipe_ratio"] = r["wall"]["median_of_medians"]
            out["summary"]["vs_mediapipe_ratio_cpu"] = r["cpu"]["median_of_medians"] if r["cpu"] else None
        ri = refine.ratios()
        if ri:
            ri["what"] = ("the same pairs against MediaPipe's attention mesh (refine_landmarks=True: FaceMesh with "
                          "iris and refined eyes and lips), stepped right after the FaceMesh graph on each frame; "
                          "detect_landmarks_iris_cpu = our detect + FaceMesh + iris refiner, the like-for-like pair")
            out["vs_mediapipe_iris"] = ri
            dli = ri.get("detect_landmarks_iris_cpu")
            out["summary"]["vs_mediapipe_iris_ratio_cpu"] = dli["median_of_medians"] if dli else None
    if limit == 0:
        out["session"] = session_latency(models_dir, model_set, threads)
        out["daemon"] = daemon_figures(models_dir, model_set, threads)
    else:
        why = "skipped with --limit (a smoke run)"
        out["session"] = {"last_challenge_to_outbox_ms": None, "last_challenge_to_outbox_why": why}
        out["daemon"] = {"start_to_ready_ms": None, "start_to_ready_why": why, "daemon_rss_mb": None,
                         "daemon_rss_why": why}
    lat = out["session"].get("last_challenge_to_outbox_ms")
    out["summary"]["last_challenge_to_outbox_median_ms"] = lat["median"] if lat else None
    ready = out["daemon"].get("start_to_ready_ms")
    out["summary"]["start_to_ready_median_ms"] = ready["median"] if ready else None
    rc = out["daemon"].get("start_to_ready_cpu_ms")
    out["summary"]["start_to_ready_cpu_median_ms"] = rc["median"] if rc else None
    drss = out["daemon"].get("daemon_rss_mb")
    out["summary"]["daemon_rss_mb"] = drss
    precs = getattr(args, "precisions", None)
    if precs:
        from kyc_tools.bench import precision
        build = tool_paths.model_build_dir()
        vdir = Path(getattr(args, "variants_dir", None) or (build / "work" if build else "models/build/work"))
        fdir = models_dir if (models_dir / "face_landmark.tflite").is_file() else default_models_dir()
        out["precision"] = precision.compare(frames, limit, fdir, vdir,
                                             precisions=tuple(p.strip() for p in precs.split(",") if p.strip()))
    out["conditions_end"] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    out["bench_wall_s"] = round(time.perf_counter() - t_start, 2)
    return out
