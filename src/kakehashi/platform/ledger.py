"""The usage ledger: every backend attempt as one append-only row, written off the request path.

:class:`LedgerSink` is the gateway's :class:`~kakehashi.gateway.context.UsageSink`. ``record``
prices the attempt (unless the record already carries ``cost_usd``) and queues it; a
background :class:`~kakehashi.platform.writer.BatchWriter` inserts the queue in batches. A
record seen twice (same request id and attempt) is kept once. In the same transaction each
stored key's ``spent_usd`` grows by what its rows cost, which is what budgets are checked
against.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from kakehashi.gateway.context import UsageRecord
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from kakehashi.platform.writer import BatchWriter


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """USD per 1M tokens; cached prompt tokens cost ``cached_input`` (default: ``input``)."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None


BATCH_DISCOUNT = 0.5
"""Batch lines cost this fraction of the normal price unless the catalog gives batch prices."""


PriceLookup = Callable[[str], ModelPrices | None]
"""The prices of a public model id (None: free)."""


def no_prices(_model: str) -> ModelPrices | None:
    """A price lookup under which everything is free."""
    return None


def cost_usd(usage: UsageRecord, prices: ModelPrices | None) -> float:
    """What ``usage`` costs at ``prices``."""
    if usage.cost_usd is not None:
        return usage.cost_usd
    if prices is None:
        return 0.0
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = prices.cached_input if prices.cached_input is not None else prices.input
    total = (
        (usage.prompt_tokens - cached) * (prices.input or 0.0)
        + cached * (cached_rate or 0.0)
        + usage.completion_tokens * (prices.output or 0.0)
    )
    return total / 1_000_000


def batch_cost_usd(usage: UsageRecord, prices: ModelPrices | None) -> float:
    """What ``usage`` costs as a batch line: at the batch prices where ``prices`` give them,
    else at :data:`BATCH_DISCOUNT` of the normal ones (of ``usage.cost_usd`` without prices)."""
    if prices is None:
        return (usage.cost_usd or 0.0) * BATCH_DISCOUNT

    def discounted(batch: float | None, normal: float | None) -> float | None:
        if batch is not None:
            return batch
        return None if normal is None else normal * BATCH_DISCOUNT

    cached = prices.cached_input if prices.cached_input is not None else prices.input
    batch = ModelPrices(
        input=discounted(prices.batch_input, prices.input),
        output=discounted(prices.batch_output, prices.output),
        cached_input=discounted(prices.batch_input, cached),
    )
    return cost_usd(replace(usage, cost_usd=None), batch)


@dataclass(frozen=True, slots=True)
class PricedUsage:
    """A usage record and what it costs."""

    usage: UsageRecord
    cost: float


def _row(item: PricedUsage) -> dict[str, Any]:
    u = item.usage
    return {
        "request_id": u.request_id,
        "attempt": u.attempt,
        "key_id": u.key_id,
        "model": u.model,
        "backend": u.backend,
        "endpoint": u.endpoint,
        "started_at_ms": round(u.started_at * 1000),
        "latency_ms": u.latency * 1000,
        "ttft_ms": u.time_to_first_token * 1000 if u.time_to_first_token is not None else None,
        "status": u.status,
        "error_code": u.error_code,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
        "streamed": u.streamed,
        "batch_id": u.batch_id,
        "cost_usd": item.cost,
    }


def _insert_ignoring_duplicates(dialect: str) -> Any:
    table = tables.usage_records
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(
            index_elements=["request_id", "attempt"]
        )
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["request_id", "attempt"])


def write_usage(conn: Connection, batch: Sequence[PricedUsage]) -> dict[str, float]:
    """Insert ``batch`` into the ledger inside ``conn``'s transaction (a row already there,
    by request id and attempt, is kept once) and add each key's new spend to the key; the USD
    each key's new rows cost."""
    if not batch:
        return {}
    rows = [_row(item) for item in batch]
    inserted = conn.execute(
        _insert_ignoring_duplicates(conn.dialect.name).returning(
            tables.usage_records.c.key_id,
            tables.usage_records.c.cost_usd,
            tables.usage_records.c.started_at_ms,
        ),
        rows,
    ).all()
    spend: defaultdict[str, float] = defaultdict(float)
    last_used: dict[str, int] = {}
    for key_id, cost, started_ms in inserted:
        spend[key_id] += cost
        last_used[key_id] = max(last_used.get(key_id, 0), started_ms // 1000)
    keys = tables.api_keys
    # One update per key, in a fixed order, so concurrent replicas never deadlock.
    for key_id in sorted(last_used):
        conn.execute(
            keys.update()
            .where(keys.c.id == key_id)
            .values(
                spent_usd=keys.c.spent_usd + spend[key_id],
                last_used_at=sa.func.coalesce(
                    sa.func.greatest(keys.c.last_used_at, last_used[key_id])
                    if conn.dialect.name == "postgresql"
                    else sa.func.max(keys.c.last_used_at, last_used[key_id]),
                    last_used[key_id],
                ),
            )
        )
    return dict(spend)


class LedgerSink(BatchWriter[PricedUsage]):
    """Queues usage records and writes them to the ledger in batches.

    ``on_written(spend)`` receives, after each commit, the USD each key's new rows cost (the
    key store adds it to the keys it caches).
    """

    name = "usage-ledger"

    def __init__(
        self,
        db: Database,
        *,
        prices: PriceLookup = no_prices,
        on_written: Callable[[Mapping[str, float]], None] | None = None,
        flush_seconds: float = 0.2,
        max_batch: int = 2000,
    ) -> None:
        super().__init__(db, flush_seconds=flush_seconds, max_batch=max_batch)
        self.prices = prices
        self.on_written = on_written
        self._pending: defaultdict[str, float] = defaultdict(float)
        self._pending_lock = threading.Lock()

    def record(self, usage: UsageRecord) -> None:
        """Price and queue one record; returns at once."""
        cost = cost_usd(usage, self.prices(usage.model))
        if cost:
            with self._pending_lock:
                self._pending[usage.key_id] += cost
        self.put(PricedUsage(usage, cost))

    def pending_spend(self, key_id: str) -> float:
        """USD recorded for ``key_id`` but not written yet."""
        return self._pending.get(key_id, 0.0)

    def write(self, conn: Connection, batch: Sequence[PricedUsage]) -> dict[str, float]:
        return write_usage(conn, batch)

    def written(self, batch: Sequence[PricedUsage], outcome: dict[str, float]) -> None:
        with self._pending_lock:
            for item in batch:
                if item.cost:
                    left = self._pending[item.usage.key_id] - item.cost
                    if left <= 1e-12:
                        self._pending.pop(item.usage.key_id, None)
                    else:
                        self._pending[item.usage.key_id] = left
        if self.on_written is not None and outcome:
            self.on_written(outcome)
