"""A private PostgreSQL cluster for the tests and `kyc-edge bench fleet`: `initdb` in a temp dir,
`postgres` on a free loopback port with its socket in that dir, stopped (and the dir removed) at
the end. Never a production database (trust auth on 127.0.0.1, fsync off).

    with Postgres() as pg:  pg.dsn, pg.create_db("x") -> dsn, pg.kill(), pg.start()

As root the server runs as the `postgres` system user (Debian's package creates it; PostgreSQL
refuses to run as root). Debian keeps the binaries in /usr/lib/postgresql/<major>/bin.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from device.localbroker import free_port


def pg_bin(name: str) -> str | None:
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0, reverse=True)
    w = shutil.which(name)
    for c in cands + ([w] if w else []):
        if c and os.access(c, os.X_OK):
            return c
    return None


def available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("postgres"))


class Postgres:
    def __init__(self, port: int | None = None, user: str = "kyc"):
        if not available():
            raise RuntimeError("PostgreSQL server binaries not installed (scripts/setup installs postgresql)")
        self.port = port or free_port()
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="kyc-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen | None = None
        self._as: dict = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        subprocess.run([pg_bin("initdb"), "-D", str(self.data), "-U", user, "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-sync"], check=True, capture_output=True, **self._as)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> "Postgres":
        log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
             "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=log, **self._as)
        import psycopg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_text()[-800:]}")
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections")

    def log_text(self) -> str:
        p = self.dir / "postgres.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def create_db(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the postmaster (its backends exit when they notice), or SIGINT for a fast stop."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if sig == signal.SIGKILL:     # orphaned backends notice the postmaster's death and exit
            time.sleep(1.0)

    def stop(self) -> None:
        self.kill(signal.SIGINT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

