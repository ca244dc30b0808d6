"""The platform database: migrations on SQLite and PostgreSQL, WAL mode, the append-only ledger."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database, DatabaseConfigError, resolve_url


def _ledger_row(request_id: str) -> dict[str, object]:
    return {
        "request_id": request_id,
        "attempt": 0,
        "key_id": "key_x",
        "model": "m",
        "backend": "local",
        "endpoint": "chat",
        "started_at_ms": 1_700_000_000_000,
        "latency_ms": 5.0,
        "status": "success",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cached_tokens": 0,
        "streamed": False,
        "cost_usd": 0.0,
    }


def test_migrations_create_every_table(database: Database) -> None:
    names = set(sa.inspect(database.engine).get_table_names())
    assert {
        "api_keys",
        "usage_records",
        "stored_bodies",
        "files",
        "batches",
        "batch_lines",
        "alembic_version",
    } <= names
    database.migrate()  # a second run is a no-op
    with database.connection() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == "0002"


def test_the_ledger_refuses_updates_and_deletes(database: Database) -> None:
    with database.connection() as conn:
        conn.execute(tables.usage_records.insert(), [_ledger_row("req_1")])
    with pytest.raises(DBAPIError, match="append-only"), database.connection() as conn:
        conn.execute(tables.usage_records.update().values(cost_usd=1.0))
    with pytest.raises(DBAPIError, match="append-only"), database.connection() as conn:
        conn.execute(tables.usage_records.delete())
    with database.connection() as conn:
        count = sa.select(sa.func.count()).select_from(tables.usage_records)
        assert conn.execute(count).scalar_one() == 1


def test_default_is_a_wal_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    db = Database.open(None, tmp_path / "data")
    try:
        assert (tmp_path / "data" / "kakehashi.db").is_file()
        with db.connection() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        db.close()


def test_concurrent_first_starts_migrate_once(database_url: str, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Database.open(database_url, tmp_path).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "must be a file"),
        ("not a url", "cannot parse"),
    ],
)
def test_bad_database_urls_are_named(url: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseConfigError, match=problem):
        resolve_url(url, tmp_path)


def test_postgres_urls_use_psycopg3(tmp_path: Path) -> None:
    assert resolve_url("postgresql://u@h/db", tmp_path).drivername == "postgresql+psycopg"
    assert resolve_url(None, tmp_path).database == str(tmp_path / "kakehashi.db")
