"""Retention on SQLite and PostgreSQL: what is stored, and a purge that removes old bodies only
(never the ledger)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from platform_records import usage

from kakehashi.gateway.context import Principal
from kakehashi.platform.files import FileStore
from kakehashi.platform.ledger import LedgerSink
from kakehashi.platform.retention import DAY_SECONDS, BodyStore, RetentionJob, should_store
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def test_store_false_always_wins() -> None:
    keeps = Principal(key_id="k", label="k", store_bodies=True)
    plain = Principal(key_id="k", label="k")
    assert should_store(None, keeps) and not should_store(None, plain)
    assert should_store(True, plain)
    assert not should_store(False, keeps)


async def test_purge_removes_old_bodies_and_expired_files_and_keeps_the_ledger(
    database: Database, tmp_path: Path
) -> None:
    clock = Clock()
    bodies = BodyStore(database, clock=clock)
    files = FileStore(database, tmp_path / "files", clock=clock)
    batch_input = files.create([b"{}\n"], owner="k", filename="in.jsonl", purpose="batch")
    kept_file = files.create([b"x"], owner="k", filename="keep.txt", purpose="user_data")
    request = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "store": True}
    bodies.save(request_id="req_old", key_id="k", endpoint="chat", request=request, response=None)
    clock.now += 29 * DAY_SECONDS
    bodies.save(
        request_id="req_new", key_id="k", endpoint="chat", request=request, response={"id": "x"}
    )
    bodies.start()
    bodies.flush()
    ledger = LedgerSink(database)
    ledger.start()
    ledger.record(usage(1, started_at=clock.now - 40 * DAY_SECONDS))
    ledger.close()

    clock.now += 2 * DAY_SECONDS  # req_old is now 31 days old, req_new 2
    job = RetentionJob(bodies, retention_days=30, files=files)
    assert await job.run_once() == 1
    assert bodies.get("req_old") == []
    [kept] = bodies.get("req_new")
    assert json.loads(kept.request) == request and json.loads(kept.response or "") == {"id": "x"}
    with database.connection() as conn:
        count = sa.select(sa.func.count()).select_from(tables.usage_records)
        assert conn.execute(count).scalar_one() == 1
    # The batch input file was uploaded 31 days ago: gone; the other file has no expiry.
    assert not files.content_path(batch_input.id).exists()
    assert [f.id for f in files.page(owner="k")[0]] == [kept_file.id]
    assert await job.run_once() == 0
    bodies.close()


async def test_the_job_purges_in_the_background(database: Database) -> None:
    clock = Clock()
    bodies = BodyStore(database, clock=clock)
    for n in range(12):
        bodies.save(request_id=f"r{n}", key_id="k", endpoint="chat", request="{}", response=None)
    bodies.start()
    bodies.flush()
    clock.now += 31 * DAY_SECONDS
    job = RetentionJob(bodies, retention_days=30, every_seconds=0.05)
    job.start()
    for _ in range(100):
        if job.runs >= 2:
            break
        await asyncio.sleep(0.02)
    await job.stop()
    assert job.runs >= 2
    assert all(bodies.get(f"r{n}") == [] for n in range(12))
    bodies.close()
