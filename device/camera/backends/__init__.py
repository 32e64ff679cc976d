"""Camera backends: one module each; a new backend is one new file (here, or anywhere through
device/plugins.py: the entry point group kyc_edge.camera_backends or $KYC_EDGE_PLUGINS).

A backend module declares:
    KEY        the `camera.backend` value, and its config section [camera.<KEY>]
    DOC        the section's one-line description (config reference)
    Options    a frozen dataclass: the section's keys, each an `opt()` (device/options.py)
    ORDER      position of the section in the config reference (lower first)
    AUTO       None, or a priority: `camera.backend = "auto"` tries these backends, lowest first
    probe()    -> None when the backend can be used on this machine, else why not (a short phrase)
    create(cfg, **kw) -> an unopened FrameSource (cfg: the [camera] section, CameraConfig)
  optional:
    auto_open(cfg, tried) -> an open FrameSource, or None after appending "what (why)" to `tried`
                 (default: probe(), then create(cfg).open())

device/config.py builds the [camera] section from these declarations, and link/ and fleet/ import
config: keep a backend module's top-level imports to the standard library and device.options, and
import the implementation (cv2, numpy, device.camera.base) inside create()/auto_open().
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable

from device import plugins

GROUP = "kyc_edge.camera_backends"
REQUIRED = ("KEY", "DOC", "Options", "probe", "create")
_registry: dict[str, ModuleType] | None = None
_listeners: list[Callable[[], None]] = []


def _check(m: ModuleType) -> None:
    missing = [a for a in REQUIRED if not hasattr(m, a)]
    if missing:
        raise TypeError(f"camera backend {m.__name__}: missing {', '.join(missing)}")
    if not isinstance(m.KEY, str) or not m.KEY.isidentifier() or m.KEY == "auto":
        raise TypeError(f"camera backend {m.__name__}: KEY must be an identifier other than 'auto'")


def _is_backend(m: ModuleType) -> bool:
    return hasattr(m, "KEY") and hasattr(m, "Options") and hasattr(m, "create")


def backends() -> dict[str, ModuleType]:
    """KEY -> module, in config-reference order."""
    global _registry
    if _registry is None:
        found = {}
        for m in plugins.discover(__name__, GROUP):
            if _is_backend(m):
                _check(m)
                found[m.KEY] = m
        _registry = found
    return dict(sorted(_registry.items(), key=lambda kv: (getattr(kv[1], "ORDER", 100), kv[0])))


def auto_order() -> list[ModuleType]:
    """Backends `auto` tries, in priority order."""
    return sorted((m for m in backends().values() if getattr(m, "AUTO", None) is not None),
                  key=lambda m: (m.AUTO, m.KEY))


def choices() -> tuple[str, ...]:
    """`camera.backend` values: auto, the auto backends in priority order, then the others."""
    auto = [m.KEY for m in auto_order()]
    return ("auto", *auto, *[k for k in backends() if k not in auto])


def register(module: ModuleType) -> None:
    """Add a backend at run time (tests, embedders); device/config.py rebuilds [camera]."""
    _check(module)
    backends()
    _registry[module.KEY] = module
    for fn in list(_listeners):
        fn()


def unregister(key: str) -> None:
    if _registry and _registry.pop(key, None) is not None:
        for fn in list(_listeners):
            fn()


def on_change(fn: Callable[[], None]) -> None:
    _listeners.append(fn)
