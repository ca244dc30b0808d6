"""The platform database: an SQLAlchemy engine on SQLite (embedded) or PostgreSQL (shared), and
the Alembic migrations that bring it to the current schema.

The embedded default is ``kakehashi.db`` in the data directory, in WAL mode so readers never
wait for the ledger's writer. ``KAKEHASHI_DATABASE_URL`` (``postgresql://user:pw@host/db``)
points several replicas at one PostgreSQL; they may start at once, since migrations run under a
lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL

logger = logging.getLogger(__name__)

SQLITE_FILE_NAME = "kakehashi.db"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x6B616B65  # "kake": the PostgreSQL advisory lock migrations hold


class DatabaseConfigError(ValueError):
    """The database URL names something kakehashi cannot use."""


def resolve_url(database_url: str | None, data_dir: Path) -> URL:
    """The SQLAlchemy URL to use: ``database_url`` (PostgreSQL through psycopg 3, or SQLite),
    else the SQLite file in ``data_dir``."""
    if database_url is None:
        return URL.create("sqlite", database=str(Path(data_dir) / SQLITE_FILE_NAME))
    try:
        url = make_url(database_url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, a bare ValueError, or others
        raise DatabaseConfigError(f"cannot parse the database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseConfigError("an SQLite database must be a file, not :memory:")
        return url.set(drivername="sqlite")
    raise DatabaseConfigError(
        f"unsupported database {backend!r}: use postgresql://... or sqlite:///path"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe in WAL mode
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """One database and its connection pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: URL | str) -> Database:
        """A database at ``url`` (nothing is opened until first use)."""
        url = make_url(url) if isinstance(url, str) else url
        if url.get_backend_name() == "sqlite":
            assert url.database is not None
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        return cls(engine)

    @classmethod
    def open(cls, database_url: str | None, data_dir: Path) -> Database:
        """Connect to the configured database and migrate it to the current schema."""
        database = cls.connect(resolve_url(database_url, data_dir))
        database.migrate()
        return database

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        with self._migration_lock(), self.engine.begin() as connection:
            if self.dialect == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:id)")
                connection.execute(lock, {"id": _MIGRATION_LOCK_ID})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """A file lock beside an SQLite database (PostgreSQL locks inside the transaction)."""
        if self.dialect != "sqlite":
            yield
            return
        assert self.engine.url.database is not None
        lock_path = Path(self.engine.url.database + ".migrate-lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def connection(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection in a transaction that commits at the end of the block."""
        return self.engine.begin()

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
