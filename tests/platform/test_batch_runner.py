"""The batch store and runner on SQLite and PostgreSQL, with a scripted ``submit`` at the
gateway seam: the lifecycle, results committed once with their ledger rows, retries, cancel,
expiry, and the lease between two workers."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kakehashi.errors import ConflictError, NotFoundError
from kakehashi.gateway.context import (
    MemoryUsageSink,
    Principal,
    Priority,
    RequestContext,
    UsageRecord,
)
from kakehashi.platform.batches.model import BatchStatus, response_line
from kakehashi.platform.batches.runner import BatchRunner, LineResponse, RunnerConfig
from kakehashi.platform.batches.store import BatchStore, LeaseLost, LineResult
from kakehashi.platform.batches.usage import BatchUsageTap
from kakehashi.platform.batches.validate import InputReader
from kakehashi.platform.files import FileStore
from kakehashi.platform.ledger import PricedUsage
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
OWNER = Principal(key_id="key_a", label="team-a", allowed_models=frozenset({"m", "m2"}))
FAST = RunnerConfig(max_in_flight=8, lease_seconds=3.0, heartbeat_seconds=0.1, poll_seconds=0.05)


def _jsonl(n: int, *, model: str = "m") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


class Gateway:
    """Answers each request like the gateway would, handing the usage tap one record."""

    def __init__(self, tap: BatchUsageTap, *, gate: asyncio.Semaphore | None = None) -> None:
        self.tap = tap
        self.gate = gate  # one permit per request let through
        self.calls: list[RequestContext] = []
        self.refuse_first: set[str] = set()

    async def __call__(
        self, endpoint: str, body: Mapping[str, Any], ctx: RequestContext
    ) -> LineResponse:
        self.calls.append(ctx)
        if self.gate is not None:
            await self.gate.acquire()
        await asyncio.sleep(0)
        content = body["messages"][0]["content"]
        if content in self.refuse_first:
            self.refuse_first.discard(content)
            return LineResponse(429, {"error": {"code": "rate_limit_exceeded"}}, retry_after=0.01)
        self.tap.record(
            UsageRecord(
                request_id=ctx.request_id,
                attempt=1,
                key_id=ctx.principal.key_id,
                model=body["model"],
                backend="scripted",
                endpoint="chat",
                started_at=time.time(),
                latency=0.01,
                status="success",
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=0.002,
                batch_id=ctx.batch_id,
            )
        )
        if body["model"] == "m2":
            return LineResponse(400, {"error": {"message": "bad", "code": "invalid_value"}})
        return LineResponse(200, {"object": "chat.completion", "echo": content})


@pytest.fixture
def files(database: Database, tmp_path: Path) -> FileStore:
    return FileStore(database, tmp_path / "files")


@pytest.fixture
def store(database: Database, files: FileStore) -> BatchStore:
    return BatchStore(database, files)


def _runner(store: BatchStore, gateway: Gateway, **options: Any) -> BatchRunner:
    return BatchRunner(
        store,
        gateway,
        usage=gateway.tap,
        price=lambda record: (record.cost_usd or 0.0) / 2,
        config=options.pop("config", FAST),
        **options,
    )


def _create(store: BatchStore, content: bytes) -> str:
    made = store.files.create([content], owner="key_a", filename="in.jsonl", purpose="batch")
    return store.create(
        OWNER, input_file_id=made.id, endpoint=CHAT, completion_window="24h", metadata={"x": "1"}
    ).id


async def _until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _status(store: BatchStore, batch_id: str) -> BatchStatus:
    return store.get(batch_id).status


def _lines(store: BatchStore, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in b"".join(store.files.read_content(file_id)).splitlines()]


def _ledger(database: Database) -> list[sa.Row[Any]]:
    with database.connection() as conn:
        return list(conn.execute(sa.select(tables.usage_records)).all())


async def test_a_batch_runs_to_completed_with_each_line_billed_once(
    store: BatchStore, database: Database
) -> None:
    content = _jsonl(30) + _jsonl(1, model="m2").replace(b"line-0", b"bad-0")
    batch_id = _create(store, content)
    tap = BatchUsageTap(MemoryUsageSink())
    gateway = Gateway(tap)
    gateway.refuse_first = {"q3", "q7"}
    runner = _runner(store, gateway)
    runner.start()
    try:
        await _until(lambda: _status(store, batch_id) is BatchStatus.COMPLETED)
    finally:
        await runner.stop()
    batch = store.get(batch_id)
    body = batch.to_dict()
    assert body["request_counts"] == {"total": 31, "completed": 30, "failed": 1}
    assert body["usage"]["input_tokens"] == 310 and body["usage"]["output_tokens"] == 155
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert body[stamp] is not None
    assert body["metadata"] == {"x": "1"} and "model" not in body
    output = _lines(store, batch.output_file_id)
    assert sorted(x["custom_id"] for x in output) == sorted(f"line-{i}" for i in range(30))
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in output)
    assert output[0]["id"].startswith("batch_req_")
    errors = _lines(store, batch.error_file_id)
    assert [(x["custom_id"], x["response"]["status_code"]) for x in errors] == [("bad-0", 400)]
    assert store.files.get(batch.output_file_id or "", owner="key_a").purpose == "batch_output"
    # Every line ran at batch priority as the owner; the refused two ran again.
    assert {c.priority for c in gateway.calls} == {Priority.BATCH}
    assert {c.principal for c in gateway.calls} == {OWNER}
    assert len(gateway.calls) == 33
    rows = _ledger(database)
    assert len(rows) == 31 and {r.batch_id for r in rows} == {batch_id}
    assert len({r.request_id for r in rows}) == 31
    assert sum(r.cost_usd for r in rows) == pytest.approx(31 * 0.001)
    assert tap.inner.records == ()  # type: ignore[attr-defined]
    # The work queue is emptied once the files hold the results.
    with database.connection() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(tables.batch_lines))
        assert left.scalar_one() == 0


async def test_bad_lines_fail_the_batch_with_line_numbers(store: BatchStore) -> None:
    content = _jsonl(2) + b"{oops\n" + _jsonl(1)
    batch_id = _create(store, content)
    runner = _runner(store, Gateway(BatchUsageTap(MemoryUsageSink())))
    runner.start()
    try:
        await _until(lambda: _status(store, batch_id) is BatchStatus.FAILED)
    finally:
        await runner.stop()
    body = store.get(batch_id).to_dict()
    assert body["failed_at"] is not None and "in_progress_at" not in body
    assert [(e["code"], e["line"]) for e in body["errors"]["data"]] == [
        ("invalid_json_line", 3),
        ("duplicate_custom_id", 4),
    ]


async def test_cancel_mid_run_keeps_finished_lines(store: BatchStore) -> None:
    batch_id = _create(store, _jsonl(40))
    tap = BatchUsageTap(MemoryUsageSink())
    gate = asyncio.Semaphore(0)
    gateway = Gateway(tap, gate=gate)
    runner = _runner(store, gateway)
    runner.start()
    try:
        for _ in range(12):
            gate.release()  # twelve lines finish; those then in flight never do
        await _until(lambda: store.get(batch_id).request_counts.completed == 12)
        started = time.monotonic()
        assert store.cancel(batch_id, owner="key_a").status is BatchStatus.CANCELLING
        await _until(lambda: _status(store, batch_id) is BatchStatus.CANCELLED, timeout=10)
        assert time.monotonic() - started < 10
    finally:
        await runner.stop()
    batch = store.get(batch_id)
    done = batch.request_counts.completed
    assert done == 12 and batch.cancelling_at and batch.cancelled_at
    assert len(_lines(store, batch.output_file_id)) == done
    unrun = _lines(store, batch.error_file_id)
    assert len(unrun) == 40 - done
    assert {x["error"]["code"] for x in unrun} == {"batch_cancelled"}
    # A second cancel is a no-op; a finished batch cannot be cancelled.
    assert store.cancel(batch_id, owner="key_a").status is BatchStatus.CANCELLED
    with pytest.raises(NotFoundError):
        store.cancel(batch_id, owner="key_b")


async def test_cancel_before_any_worker_and_conflict_after_completion(store: BatchStore) -> None:
    early = _create(store, _jsonl(3))
    assert store.cancel(early, owner="key_a").status is BatchStatus.CANCELLING
    later = _create(store, _jsonl(3))
    runner = _runner(store, Gateway(BatchUsageTap(MemoryUsageSink())))
    runner.start()
    try:
        await _until(lambda: _status(store, early) is BatchStatus.CANCELLED)
        await _until(lambda: _status(store, later) is BatchStatus.COMPLETED)
    finally:
        await runner.stop()
    assert store.get(early).output_file_id is None
    with pytest.raises(ConflictError, match="'completed'"):
        store.cancel(later, owner="key_a")


async def test_the_window_passing_expires_the_batch(database: Database, files: FileStore) -> None:
    now = [time.time()]
    store = BatchStore(database, files, clock=lambda: now[0])
    batch_id = _create(store, _jsonl(20))
    gate = asyncio.Semaphore(0)
    gateway = Gateway(BatchUsageTap(MemoryUsageSink()), gate=gate)
    runner = _runner(store, gateway)
    runner.start()
    try:
        for _ in range(8):
            gate.release()
        await _until(lambda: store.get(batch_id).request_counts.completed == 8)
        now[0] += 24 * 3600 + 1
        await _until(lambda: _status(store, batch_id) is BatchStatus.EXPIRED)
    finally:
        await runner.stop()
    batch = store.get(batch_id)
    assert batch.expired_at is not None and batch.completed_at is None
    expired = _lines(store, batch.error_file_id)
    assert {x["error"]["code"] for x in expired} == {"batch_expired"}
    assert len(expired) + batch.request_counts.completed == 20


def test_results_commit_once_and_only_under_the_lease(
    store: BatchStore, database: Database
) -> None:
    batch_id = _create(store, _jsonl(3))
    claimed = store.claim("w1", lease_seconds=30)
    assert claimed is not None and claimed.principal == OWNER
    assert store.claim("w2", lease_seconds=30) is None  # held
    lines = InputReader(CHAT).read(store.files.read_content(claimed.batch.input_file_id))
    assert store.start(batch_id, "w1", lines, model="m", lease_seconds=30)

    def result(n: int) -> LineResult:
        record = UsageRecord(
            request_id=f"req_{n}",
            attempt=1,
            key_id="key_a",
            model="m",
            backend="b",
            endpoint="chat",
            started_at=time.time(),
            latency=0.1,
            status="success",
            prompt_tokens=1,
            batch_id=batch_id,
        )
        return LineResult(n, json.dumps({"n": n}), True, [PricedUsage(record, 0.5)])

    assert store.commit_results(batch_id, "w1", [result(1), result(2)], lease_seconds=30) == {
        "key_a": 1.0
    }
    # A replay of line 2 (a worker that ran it again) changes nothing.
    assert store.commit_results(batch_id, "w1", [result(2)], lease_seconds=30) == {}
    with pytest.raises(LeaseLost):
        store.commit_results(batch_id, "w2", [result(3)], lease_seconds=30)
    assert len(_ledger(database)) == 2
    assert store.get(batch_id).request_counts.completed == 2
    assert [p.line_no for p in store.pending(batch_id)] == [3]


async def test_two_workers_share_batches_and_one_takes_over_from_a_dead_one(
    store: BatchStore, database: Database
) -> None:
    ids = [_create(store, _jsonl(10)) for _ in range(4)]
    tap = BatchUsageTap(MemoryUsageSink())

    class Unreachable(BatchStore):
        """The dying worker never gets to give its leases back."""

        def release(self, batch_id: str, worker: str) -> None:
            return None

    dying = _runner(
        Unreachable(database, store.files),
        Gateway(tap, gate=asyncio.Semaphore(0)),
        worker_id="dying",
    )
    dying.start()
    await _until(lambda: len(dying.active) == 4)
    # It dies without a word: its tasks end, its leases stay until they lapse (3 s).
    assert dying._task is not None
    dying._task.cancel()
    for _job, task in list(dying._jobs.values()):
        task.cancel()
    survivor = _runner(store, Gateway(tap), worker_id="survivor")
    survivor.start()
    try:
        await asyncio.sleep(1.0)
        assert {_status(store, i) for i in ids} <= {BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS}
        await _until(lambda: all(_status(store, i) is BatchStatus.COMPLETED for i in ids))
    finally:
        await survivor.stop()
        await dying.stop()  # its store calls still running, if any, end before the pool goes
    assert len(_ledger(database)) == 40
    for batch_id in ids:
        assert len(_lines(store, store.get(batch_id).output_file_id)) == 10


async def test_lines_of_a_revoked_owner_fail_as_401(store: BatchStore) -> None:
    batch_id = _create(store, _jsonl(30))
    gate = asyncio.Semaphore(0)
    gateway = Gateway(BatchUsageTap(MemoryUsageSink()), gate=gate)
    revoked = False
    runner = _runner(store, gateway, owner_active=lambda principal: not revoked)
    runner.start()
    try:
        for _ in range(10):
            gate.release()
        await _until(lambda: store.get(batch_id).request_counts.completed == 10)
        revoked = True
        await asyncio.sleep(0.5)  # a heartbeat or more
        for _ in range(30):
            gate.release()  # the lines in flight when the key went end normally
        await _until(lambda: _status(store, batch_id) is BatchStatus.COMPLETED)
    finally:
        await runner.stop()
    batch = store.get(batch_id)
    refused = _lines(store, batch.error_file_id)
    assert batch.request_counts.failed == len(refused) >= 10
    assert {x["response"]["status_code"] for x in refused} == {401}
    assert {x["response"]["body"]["error"]["code"] for x in refused} == {"invalid_api_key"}


async def test_stop_waits_for_a_database_call_already_made(
    database: Database, files: FileStore
) -> None:
    """A store call cannot be interrupted in its thread: stop() returns only once it is done,
    so the pool is never disposed with a connection still checked out (psycopg would warn
    "connection ... was deleted while still open" when that connection is collected)."""
    entered, release = threading.Event(), threading.Event()

    class SlowClaims(BatchStore):
        def claim(self, worker: str, **options: Any) -> Any:
            entered.set()
            release.wait(10)
            return super().claim(worker, **options)

    runner = _runner(SlowClaims(database, files), Gateway(BatchUsageTap(MemoryUsageSink())))
    runner.start()
    assert await asyncio.to_thread(entered.wait, 10)
    stopping = asyncio.ensure_future(runner.stop())
    await asyncio.sleep(0.3)
    assert not stopping.done()  # the claim is still running in its thread
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_batch_left_finalizing_is_completed_by_the_next_worker(
    store: BatchStore, database: Database
) -> None:
    """A worker ran every line, marked the batch finalizing, and died before its files were
    written: the next worker writes them and completes the batch, running no line again."""
    batch_id = _create(store, _jsonl(5))
    claimed = store.claim("dead", lease_seconds=30)
    assert claimed is not None
    lines = InputReader(CHAT).read(store.files.read_content(claimed.batch.input_file_id))
    assert store.start(batch_id, "dead", lines, model="m", lease_seconds=30)
    results = [
        LineResult(
            line.line_no,
            json.dumps(response_line(batch_id, line.custom_id, 200, {"n": line.line_no})),
            True,
        )
        for line in store.pending(batch_id)
    ]
    store.commit_results(batch_id, "dead", results, lease_seconds=30)
    store.mark_finalizing(batch_id, "dead", lease_seconds=0.2)  # then it dies
    left = store.get(batch_id).to_dict()
    assert left["status"] == "finalizing" and left["finalizing_at"] is not None
    assert "completed_at" not in left and "output_file_id" not in left
    gateway = Gateway(BatchUsageTap(MemoryUsageSink()))
    runner = _runner(store, gateway)
    runner.start()
    try:
        await _until(lambda: _status(store, batch_id) is BatchStatus.COMPLETED)
    finally:
        await runner.stop()
    assert gateway.calls == []
    batch = store.get(batch_id)
    assert batch.finalizing_at == left["finalizing_at"] and batch.completed_at is not None
    output = _lines(store, batch.output_file_id)
    assert sorted(x["custom_id"] for x in output) == [f"line-{i}" for i in range(5)]
    assert batch.error_file_id is None


async def test_a_store_call_failing_after_its_awaiter_left_leaves_no_loose_error(
    store: BatchStore,
) -> None:
    """A heartbeat cancelled while its call runs on, then the call raises LeaseLost (the batch
    was finished meanwhile): the error is seen, not reported as never retrieved."""
    runner = _runner(store, Gateway(BatchUsageTap(MemoryUsageSink())))
    release = threading.Event()

    def lease_gone() -> None:
        release.wait(10)
        raise LeaseLost("batch_x")

    waiter = asyncio.ensure_future(runner._blocking(lease_gone))
    await asyncio.sleep(0.05)
    waiter.cancel()
    release.set()
    await runner.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gc.collect()
