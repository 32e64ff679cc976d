"""A/B bundle slots under the state directory, the atomic `current` switch and the boot guard.

    <state_dir>/bundles/
        A/  B/          a complete slot: models/ (every model file), config.json (the patch),
                        manifest.json (signed envelope as received), READY (bundle_version; last
                        file written, fsynced)
        current -> A    relative symlink; switched by rename(2) of a fresh symlink over it, then
                        fsync of the directory. No `current` = factory models and base config.
        state.json      journal: trial (switch on probation), staged, last status, pending report
        nonces.json     manifest nonces already seen (replay protection)
        .stage-X/ .incoming/   work areas, removed at start-up

A slot is built in `.stage-X` and renamed to `X` only when complete, and `current` is only ever
pointed at a complete slot, so a power cut at any point leaves `current` naming a complete slot
(or no slot: factory). `boot_guard` double-checks that and counts restarts after a switch.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from device import config as config_mod
from device.fleet.journal import Journal, Staged

SLOTS = ("A", "B")
KILL_ENV = "KYC_EDGE_FLEET_KILL_AT"   # fault injection for tests: SIGKILL self at a named step
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def killpoint(step: str) -> None:
    """Simulate a power cut at `step` (tests set KYC_EDGE_FLEET_KILL_AT)."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def bundles_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "bundles"


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def is_complete(slot_dir: Path) -> bool:
    try:
        int((slot_dir / "READY").read_text().strip())
    except (OSError, ValueError):
        return False
    return (slot_dir / "manifest.json").is_file() and (slot_dir / "models").is_dir() \
        and (slot_dir / "config.json").is_file()


def current_slot(state_dir: str | os.PathLike) -> str | None:
    try:
        target = os.readlink(bundles_dir(state_dir) / "current")
    except OSError:
        return None
    return target if target in SLOTS else None


def active_bundle(state_dir: str | os.PathLike) -> Path | None:
    """The current slot's directory (models/ + config.json), or None: use the factory models."""
    slot = current_slot(state_dir)
    if slot is None:
        return None
    d = bundles_dir(state_dir) / slot
    return d if is_complete(d) else None


def model_dir(bundle_dir: Path | None, factory: Path) -> Path:
    return Path(bundle_dir) / "models" if bundle_dir else Path(factory)


def slot_version(slot_dir: Path | None) -> int:
    if slot_dir is None:
        return 0
    try:
        return int((Path(slot_dir) / "READY").read_text().strip())
    except (OSError, ValueError):
        return 0


def current_version(state_dir: str | os.PathLike) -> int:
    return slot_version(active_bundle(state_dir))


def config_patch(bundle_dir: Path | None) -> dict:
    if bundle_dir is None:
        return {}
    try:
        p = json.loads((Path(bundle_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return p if isinstance(p, dict) else {}


def deep_merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# Identity and where things live are not the fleet's to change by a bundle.
PROTECTED = {("device", "id"), ("device", "site"), ("device", "state_dir"), ("fleet", "public_keys"),
             ("mqtt", "url"), ("models", "dir")}


def merge_config(cfg: config_mod.Config, patch: dict) -> config_mod.Config:
    """Patch merged over the running config, validated by device.config.from_dict (ConfigError)."""
    for sect, key in PROTECTED:
        if isinstance(patch.get(sect), dict) and key in patch[sect]:
            raise config_mod.ConfigError([f"config: {sect}.{key}: may not be changed by a fleet bundle"])
    return config_mod.from_dict(deep_merge(config_mod.to_dict(cfg), patch))


def merged_config(cfg: config_mod.Config, bundle_dir: Path | None) -> config_mod.Config:
    return merge_config(cfg, config_patch(bundle_dir))


# ------------------------------------------------------------------ journal
def read_state(state_dir: str | os.PathLike) -> dict:
    try:
        st = json.loads((bundles_dir(state_dir) / "state.json").read_text())
        return st if isinstance(st, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(state_dir: str | os.PathLike, st: dict) -> None:
    d = bundles_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / "state.json", json.dumps(st, sort_keys=True).encode())


def load_journal(state_dir: str | os.PathLike) -> Journal:
    return Journal.from_dict(read_state(state_dir))


def save_journal(state_dir: str | os.PathLike, j: Journal) -> None:
    write_state(state_dir, j.to_dict())


def point_current(d: Path, slot: str) -> None:
    """Atomically point `d/current` at `slot` (relative symlink, rename(2)) and fsync `d`:
    the one switch of both the bundle and the software slots."""
    tmp = d / ".current.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(slot, tmp)
    os.replace(tmp, d / "current")
    fsync_dir(d)


def switch(state_dir: str | os.PathLike, slot: str | None) -> None:
    """Atomically point `current` at slot (None: remove it, factory) and fsync the directory."""
    d = bundles_dir(state_dir)
    if slot is None:
        try:
            os.unlink(d / "current")
        except FileNotFoundError:
            pass
        fsync_dir(d)
        return
    if slot not in SLOTS or not is_complete(d / slot):
        raise ValueError(f"slot {slot!r} is not complete")
    point_current(d, slot)


def cleanup(state_dir: str | os.PathLike) -> None:
    """Remove half-built stages, partial downloads and a stray temp link (start-up only)."""
    d = bundles_dir(state_dir)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.name.startswith((".stage-", ".incoming", ".trash-")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".current.tmp") or (p.name.startswith(".") and ".tmp" in p.name):
            try:
                p.unlink()
            except OSError:
                pass


# ------------------------------------------------------------------ staging
def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        _fsync_file(dst)


def stage_slot(state_dir: str | os.PathLike, slot: str, files: dict[str, Path], base_models: Path | None,
               envelope: dict, patch: dict, version: int) -> Path:
    """Build slot `slot` from downloaded `files` (moved in) overlaid on `base_models` (linked or
    copied), atomically. Raises OSError (disk full etc.); the slot is then absent, not partial."""
    d = bundles_dir(state_dir)
    if slot == current_slot(state_dir):
        raise ValueError("refusing to stage into the current slot")
    tmp = d / f".stage-{slot}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "models").mkdir(parents=True)
        for name, src in files.items():
            os.replace(src, tmp / "models" / name)
            _fsync_file(tmp / "models" / name)
        if base_models and Path(base_models).is_dir():
            # a build derived from a model this bundle replaces (<stem>_int8.tflite, <stem>_int8_b1.tflite,
            # ...) is stale: carrying it over would keep the old weights running wherever int8 is preferred
            replaced = tuple(Path(n).stem + "_" for n in files)
            for f in sorted(Path(base_models).iterdir()):
                stale = f.suffix == ".tflite" and f.stem.startswith(replaced)
                if f.is_file() and not f.name.startswith(".") and f.name not in files and not stale:
                    _link_or_copy(f, tmp / "models" / f.name)
        fsync_dir(tmp / "models")
        for name, obj in (("config.json", patch), ("manifest.json", envelope)):
            with open(tmp / name, "w") as fh:
                json.dump(obj, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
        with open(tmp / "READY", "w") as fh:
            fh.write(f"{int(version)}\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        killpoint("stage_written")
        final = d / slot
        if final.exists():
            trash = d / f".trash-{slot}"
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    killpoint("staged")
    return final


def other_slot(state_dir: str | os.PathLike) -> str:
    return "B" if current_slot(state_dir) == "A" else "A"


# ------------------------------------------------------------------ boot guard
def boot_guard(state_dir: str | os.PathLike, fcfg: Any, now: float | None = None) -> dict | None:
    """Call once at daemon start, before loading models. Counts this start if a switch is on
    probation; on `crash_loop_restarts` starts within `crash_loop_window_s` of the switch it points
    `current` back at the previous slot (or factory). Also repairs a `current` that names an
    incomplete slot. Returns what it did ({'action': 'rolled_back'|'counted'|'cleared', ...})
    or None; a rollback is also queued in the journal for the agent to report as ROLLED_BACK."""
    now = time.time() if now is None else now
    d = bundles_dir(state_dir)
    if not d.is_dir():
        return None
    j = load_journal(state_dir)
    trial = j.trial
    cur = current_slot(state_dir)

    def rollback(reason: str) -> dict:
        to = trial.from_slot if trial else None
        if to is not None and not is_complete(d / to):
            to = None
        switch(state_dir, to)
        from_v = trial.version if trial else slot_version(d / cur) if cur else 0
        rep = {"state": "rolled_back", "reason": reason, "bundle_version": slot_version(d / to) if to else 0,
               "target_version": from_v or 0}
        j.roll_back(rep, drop_staged=True, repair=trial is None)
        save_journal(state_dir, j)
        return {"action": "rolled_back", **rep}

    if os.path.islink(d / "current") and (cur is None or not is_complete(d / cur)):
        return rollback("slot_invalid")
    step = j.boot(cur, now, float(fcfg.crash_loop_window_s), int(fcfg.crash_loop_restarts))
    if step is None:
        return None
    if step == "crash_loop":
        return rollback("crash_loop")
    if step == "not_switched":
        # journal written but the switch never happened (power cut): the slot passed its
        # self-test, so hand it back to the agent as staged; it switches when no session runs
        slot = trial.slot
        ok = cur == trial.from_slot and slot in SLOTS and is_complete(d / slot) \
            and slot_version(d / slot) == trial.version
        j.abandon(Staged(slot, trial.version) if ok else None)
        step = "cleared"
    save_journal(state_dir, j)
    if step == "counted":
        return {"action": "counted", "restarts": len(j.trial.boots)}
    return {"action": step}


def disk_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS
