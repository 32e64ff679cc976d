"""Plugin discovery for the hardware edges (camera backends, card types). Standard library only.

A plugin is one module. Three ways in, all optional:
  * built in: a module in the edge's own package (device/camera/backends/, ...);
  * installed: an entry point in the edge's group (kyc_edge.camera_backends, kyc_edge.card_types),
    whose value names the module;
  * named: $KYC_EDGE_PLUGINS, a comma-separated list of importable modules (a site's own file on
    PYTHONPATH, or the tests' plugins). Each is imported once; what it declares decides where it goes.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points
from types import ModuleType

ENV = "KYC_EDGE_PLUGINS"


def named_modules() -> list[ModuleType]:
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return [importlib.import_module(n) for n in names]


def package_modules(package: str) -> list[ModuleType]:
    pkg = importlib.import_module(package)
    return [importlib.import_module(f"{package}.{m.name}")
            for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name)
            if not m.name.startswith("_")]


def entry_point_modules(group: str) -> list[ModuleType]:
    out = []
    for ep in entry_points(group=group):
        obj = ep.load()
        out.append(obj if isinstance(obj, ModuleType) else importlib.import_module(ep.module))
    return out


def discover(package: str, group: str) -> list[ModuleType]:
    """Built-in modules of `package`, then the group's entry points, then $KYC_EDGE_PLUGINS."""
    seen, out = set(), []
    for m in package_modules(package) + entry_point_modules(group) + named_modules():
        if m.__name__ not in seen:
            seen.add(m.__name__)
            out.append(m)
    return out
