"""Real PostgreSQL and Redis servers for tests and benchmarks, private to the caller.

Each starts from the Debian packages' binaries (``apt-get install postgresql redis-server``,
which ``.ci/run`` does) in a temporary directory, listening on a free port of 127.0.0.1, and is
stopped and removed at the end of the block. Nothing is shared with a system service.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from support.server import free_port

__all__ = ["PostgresServer", "RedisServer", "missing_services", "postgres_server", "redis_server"]

_PG_USER = "kakehashi"


def _postgres_bin(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


def missing_services() -> list[str]:
    """The binaries these helpers need that the machine lacks."""
    wanted = {"initdb": _postgres_bin("initdb"), "postgres": _postgres_bin("postgres")}
    wanted["redis-server"] = shutil.which("redis-server")
    return [name for name, path in wanted.items() if path is None]


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as the packages' ``postgres`` user then."""
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class PostgresServer:
    """A running PostgreSQL; ``url(db)`` is the SQLAlchemy URL of one of its databases."""

    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        dsn = f"host=127.0.0.1 port={self.port} user={_PG_USER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@dataclass
class RedisServer:
    """A running redis-server."""

    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start in 30 s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a free port (``durable=False`` turns fsync off, for
    tests; benchmarks keep PostgreSQL's defaults)."""
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    with tempfile.TemporaryDirectory(prefix="kakehashi-pg-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        log = root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(data, "postgres")
        subprocess.run(
            [initdb, "-D", str(data), "-U", _PG_USER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            user=_postgres_user(),
            cwd=root,
        )
        port = free_port()
        options = [
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={root}",
            "-c", "max_connections=100",
        ]  # fmt: skip
        if not durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [postgres, "-D", str(data), "-p", str(port), *options],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=_postgres_user(),
                cwd=root,
            )
        try:
            dsn = f"host=127.0.0.1 port={port} user={_PG_USER} dbname=postgres connect_timeout=2"

            def ready() -> bool:
                with psycopg.connect(dsn) as conn:
                    conn.execute("SELECT 1")
                return True

            _wait(ready, process, "postgres", log)
            yield PostgresServer(port)
        finally:
            _stop(process, signal.SIGINT)  # "fast" shutdown


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="kakehashi-redis-") as tmp:
        log = Path(tmp) / "redis.log"
        port = free_port()
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--protected-mode", "no",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:

            def ready() -> bool:
                return bool(redis.Redis(port=port, socket_timeout=1).ping())

            _wait(ready, process, "redis-server", log)
            yield RedisServer(port)
        finally:
            _stop(process, signal.SIGTERM)
