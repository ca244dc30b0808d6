"""The usage ledger on SQLite and PostgreSQL: pricing, batching off the request path, one row per
attempt, spend on the keys, retries when a write fails, nothing lost on a clean shutdown and at
most the last moments on kill -9."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from platform_records import usage

from kakehashi.platform.keys import KeyRepository, NewKey
from kakehashi.platform.ledger import LedgerSink, ModelPrices, batch_cost_usd, cost_usd
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from kakehashi.settings import DEFAULT_TIERS

HERE = Path(__file__).parent
PRICES = {"gpt-4": ModelPrices(input=30.0, output=60.0, cached_input=15.0)}


def rows(db: Database) -> list[sa.Row[object]]:
    with db.connection() as conn:
        query = sa.select(tables.usage_records).order_by(tables.usage_records.c.id)
        return list(conn.execute(query))


def test_cost_from_catalog_prices() -> None:
    prices = PRICES["gpt-4"]
    plain = usage(0, prompt_tokens=1000, completion_tokens=500)
    assert cost_usd(plain, prices) == pytest.approx((1000 * 30 + 500 * 60) / 1e6)
    cached = usage(0, prompt_tokens=1000, cached_tokens=400, completion_tokens=0)
    assert cost_usd(cached, prices) == pytest.approx((600 * 30 + 400 * 15) / 1e6)
    no_cached_rate = ModelPrices(input=2.0, output=4.0)
    assert cost_usd(cached, no_cached_rate) == pytest.approx(1000 * 2 / 1e6)
    assert cost_usd(plain, None) == 0.0
    assert cost_usd(usage(0, cost_usd=1.25), prices) == 1.25  # an upstream's own figure wins


def test_batch_lines_cost_half_unless_the_catalog_gives_batch_prices() -> None:
    prices = PRICES["gpt-4"]
    cached = usage(0, prompt_tokens=1000, cached_tokens=400, completion_tokens=500)
    assert batch_cost_usd(cached, prices) == pytest.approx(cost_usd(cached, prices) / 2)
    # The gateway's own figure is replaced by the catalog's batch price...
    priced = usage(0, prompt_tokens=1000, completion_tokens=500, cost_usd=9.0)
    own = ModelPrices(input=30.0, output=60.0, batch_input=10.0)
    assert batch_cost_usd(priced, own) == pytest.approx((1000 * 10 + 500 * 30) / 1e6)
    # ... and halved when the model has no prices in the catalog.
    assert batch_cost_usd(priced, None) == pytest.approx(4.5)
    assert batch_cost_usd(usage(0, prompt_tokens=10), None) == 0.0


def test_records_are_queued_then_written_in_batches(database: Database) -> None:
    sink = LedgerSink(database, prices=PRICES.get, max_batch=500)
    for n in range(1200):
        sink.record(usage(n, streamed=n % 2 == 0, time_to_first_token=0.01))
    assert rows(database) == []  # record() never touched the database
    assert sink.queued == 1200
    sink.start()
    assert sink.flush()
    written = rows(database)
    assert len(written) == 1200
    first = written[0]._mapping
    assert first["request_id"] == "req_0" and first["streamed"] is True
    assert first["started_at_ms"] == 1_750_000_000_000
    assert first["latency_ms"] == pytest.approx(50.0) and first["ttft_ms"] == pytest.approx(10.0)
    assert first["cost_usd"] == pytest.approx((100 * 30 + 10 * 60) / 1e6)
    sink.close()


def test_each_attempt_is_one_row_even_if_recorded_twice(database: Database) -> None:
    sink = LedgerSink(database)
    sink.start()
    sink.record(usage(1))
    sink.record(usage(1, attempt=1, status="error", error_code="server_error"))
    sink.flush()
    sink.record(usage(1))  # the same attempt again
    sink.close()
    assert [(r.request_id, r.attempt, r.status) for r in rows(database)] == [
        ("req_1", 0, "success"),
        ("req_1", 1, "error"),
    ]


def test_spend_accrues_on_the_stored_key(database: Database) -> None:
    repo = KeyRepository(database)
    key, _ = repo.create(NewKey(name="k", budget_usd=1.0), tiers=DEFAULT_TIERS)
    seen: list[dict[str, float]] = []
    sink = LedgerSink(database, prices=PRICES.get, on_written=lambda s: seen.append(dict(s)))
    for n in range(10):
        sink.record(usage(n, key_id=key.id))
    sink.record(usage(99, key_id="cfg_settings_key"))  # a key not in the table: no update
    assert sink.pending_spend(key.id) == pytest.approx(10 * 0.0036)
    sink.start()
    sink.close()
    assert sink.pending_spend(key.id) == 0.0
    stored = repo.get(key.id)
    assert stored.spent_usd == pytest.approx(10 * 0.0036)
    assert stored.last_used_at == 1_750_000_009
    assert sum(s.get(key.id, 0.0) for s in seen) == pytest.approx(10 * 0.0036)


def test_a_failed_write_is_retried_without_losing_rows(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    sink = LedgerSink(database, flush_seconds=0.05)
    with database.connection() as conn:
        conn.execute(sa.text("ALTER TABLE usage_records RENAME TO usage_records_away"))
    sink.start()
    for n in range(50):
        sink.record(usage(n))
    deadline = time.monotonic() + 10
    while "retrying" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "writing 50 items failed, retrying" in caplog.text
    with database.connection() as conn:
        conn.execute(sa.text("ALTER TABLE usage_records_away RENAME TO usage_records"))
    assert sink.flush(timeout=15)
    sink.close()
    assert [r.request_id for r in rows(database)] == [f"req_{n}" for n in range(50)]


def test_a_clean_shutdown_loses_nothing(database: Database) -> None:
    sink = LedgerSink(database, flush_seconds=1.0)
    sink.start()
    for n in range(5000):
        sink.record(usage(n))
    sink.close()  # right away: most rows are still queued
    assert len(rows(database)) == 5000


@pytest.mark.slow
def test_kill_9_loses_at_most_the_last_moments(
    database: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A process writing 1,000 rows/s is killed; the rows it lost were all made in the last
    flush interval (0.2 s) plus one write."""
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "_ledger_worker.py"), database_url, "1000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    made = 0
    while made < 2500:
        line = worker.stdout.readline()
        assert line, "the worker stopped early"
        made = int(line)
    killed_at = time.time()
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    worker.stdout.close()
    with database.connection() as conn:
        count, newest_ms = conn.execute(
            sa.select(sa.func.count(), sa.func.max(tables.usage_records.c.started_at_ms))
        ).one()
    lost_seconds = killed_at - newest_ms / 1000
    logging.getLogger("test").warning(
        "kill -9 on %s: %d rows written of at least %d made; newest written row %.3f s old",
        database.dialect,
        count,
        made,
        lost_seconds,
    )
    assert count >= 2000
    assert lost_seconds <= 1.0
