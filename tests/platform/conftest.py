"""Fixtures of the platform tests: every storage test runs on SQLite and on a real PostgreSQL;
limiter tests also on a real Redis.

PostgreSQL and Redis come from the Debian packages (``.ci/run`` installs them). Without them
these tests are skipped on a developer's machine, and fail in CI (``CI`` set), where nothing
may be skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kakehashi.platform.storage.db import Database
from support.services import PostgresServer, missing_services, postgres_server, redis_server

_database_names = itertools.count()


_BINARIES = {"postgres": ("initdb", "postgres"), "redis": ("redis-server",)}


def _need(service: str) -> None:
    wanted = [name for name in missing_services() if name in _BINARIES[service]]
    if wanted:
        message = f"{', '.join(wanted)} not installed (apt-get install postgresql redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    _need("postgres")
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    _need("redis")
    with redis_server() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kakehashi.db'}"
    server: PostgresServer = request.getfixturevalue("pg")
    return server.create_database(f"test_{os.getpid()}_{next(_database_names)}")


@pytest.fixture
def database(database_url: str, tmp_path: Path) -> Iterator[Database]:
    """A migrated database of each kind."""
    db = Database.open(database_url, tmp_path)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
