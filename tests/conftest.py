"""Shared fixtures: where ../shared is, and a real mosquitto broker on a free loopback port.

Under CI=true a test whose data ../shared provides must never skip: `need()` fails instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.brokers import Mosquitto, free_port  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KYC_EDGE_SHARED", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def load_script(name: str):
    """One of scripts/ (files without a .py suffix) as a module, e.g. load_script("build-models")."""
    import importlib.util
    from importlib.machinery import SourceFileLoader
    mod_name = name.replace("-", "_")
    loader = SourceFileLoader(mod_name, str(REPO / "scripts" / name))
    spec = importlib.util.spec_from_loader(mod_name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def bm():
    """scripts/build-models as a module."""
    return load_script("build-models")


def need(path: Path) -> Path:
    """Return path if it exists; otherwise skip locally, fail in CI."""
    if path.exists():
        return path
    missing(f"test data missing: {path}")


def missing(msg: str) -> None:
    """Something scripts/setup provides is absent: skip on a hand-made dev box, fail in CI."""
    if IN_CI:
        pytest.fail(msg + " (scripts/setup provides it; CI must not skip)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared() -> Path:
    return need(SHARED)


@pytest.fixture(scope="session")
def shared_data(shared) -> Path:
    return need(shared / "data")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Installed models (scripts/setup -> kyc-edge models install), else the offline mirror."""
    from device.models import model_dirs_with_models
    found = model_dirs_with_models(extra=(SHARED / "models",))
    return found[0] if found else need(SHARED / "models" / "face_detection_short_range.tflite").parent


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port (anonymous, MQTT 5 capable)."""
    with Mosquitto(tmp_path) as b:
        yield b


@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL cluster for the session (initdb in a temp dir, free loopback port)."""
    from tests import pg
    if not pg.available():
        missing("PostgreSQL server binaries not installed (scripts/setup installs postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg not installed (scripts/setup installs kyc-edge-tools)")
    with pg.Postgres() as cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg_cluster, request):
    """A fresh database in the session's cluster; returns its DSN."""
    import re
    import uuid
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    return pg_cluster.create_db(name)


@pytest.fixture(scope="module")
def lfw(shared_data):
    """LFW pairs (rows of pairs.csv) and a loader of its images as RGB."""
    import csv

    import cv2
    root = shared_data / "lfw-dev"
    with open(root / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def load(name):
        return cv2.cvtColor(cv2.imread(str(root / "images" / name)), cv2.COLOR_BGR2RGB)
    return rows, load
