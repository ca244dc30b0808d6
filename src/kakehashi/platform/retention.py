"""Stored request and response bodies, and the job that purges them.

A body is kept only when the request asked for it (``store: true``) or the key's policy says
so, and never when the request says ``store: false``. Bodies are written off the request path,
like the ledger, and deleted once older than the retention period (30 days by default, as
OpenAI's abuse-monitoring window) by :class:`RetentionJob`. The ledger is never purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from kakehashi.gateway.context import Principal
from kakehashi.platform.files import FileStore
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from kakehashi.platform.writer import BatchWriter

logger = logging.getLogger(__name__)

DAY_SECONDS = 86_400


def should_store(requested: bool | None, principal: Principal) -> bool:
    """Whether to keep a request's bodies: ``store: false`` always wins, ``store: true``
    always keeps, and without either the key's policy decides."""
    if requested is not None:
        return requested
    return principal.store_bodies


@dataclass(frozen=True, slots=True)
class StoredBody:
    """One request's bodies (JSON text)."""

    request_id: str
    key_id: str
    endpoint: str
    created_at: float
    request: str
    response: str | None


def _json(value: Mapping[str, Any] | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class BodyStore(BatchWriter[StoredBody]):
    """Keeps bodies in the database; ``save`` returns at once."""

    name = "body-store"

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time, **options: Any):
        super().__init__(db, **options)
        self.clock = clock

    def save(
        self,
        *,
        request_id: str,
        key_id: str,
        endpoint: str,
        request: Mapping[str, Any] | str,
        response: Mapping[str, Any] | str | None,
    ) -> None:
        """Queue one request's bodies."""
        body = _json(request)
        assert body is not None
        self.put(StoredBody(request_id, key_id, endpoint, self.clock(), body, _json(response)))

    def write(self, conn: Connection, batch: Sequence[StoredBody]) -> None:
        conn.execute(
            tables.stored_bodies.insert(),
            [
                {
                    "request_id": b.request_id,
                    "key_id": b.key_id,
                    "endpoint": b.endpoint,
                    "created_at_ms": round(b.created_at * 1000),
                    "request_body": b.request,
                    "response_body": b.response,
                }
                for b in batch
            ],
        )

    def get(self, request_id: str) -> list[StoredBody]:
        """The bodies stored for ``request_id``."""
        t = tables.stored_bodies
        with self.db.connection() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.request_id == request_id).order_by(t.c.id)
            ).all()
        return [
            StoredBody(
                r.request_id,
                r.key_id,
                r.endpoint,
                r.created_at_ms / 1000,
                r.request_body,
                r.response_body,
            )
            for r in rows
        ]

    def purge(self, *, older_than_days: float, batch_size: int = 5000) -> int:
        """Delete bodies stored before ``older_than_days`` ago, in batches; how many went."""
        cutoff = round((self.clock() - older_than_days * DAY_SECONDS) * 1000)
        t = tables.stored_bodies
        deleted = 0
        while True:
            with self.db.connection() as conn:
                ids = sa.select(t.c.id).where(t.c.created_at_ms < cutoff).limit(batch_size)
                done = conn.execute(t.delete().where(t.c.id.in_(ids.scalar_subquery())))
            deleted += done.rowcount
            if done.rowcount < batch_size:
                return deleted


class RetentionJob:
    """Purges old bodies (and, given ``files``, expired files) every ``every_seconds`` (and
    once at start) in the background."""

    def __init__(
        self,
        bodies: BodyStore,
        *,
        retention_days: float,
        every_seconds: float = 3600.0,
        files: FileStore | None = None,
    ) -> None:
        self.bodies = bodies
        self.files = files
        self.retention_days = retention_days
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def start(self) -> None:
        """Start purging (call from within the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop purging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """One purge, off the event loop."""
        deleted = await asyncio.to_thread(self.bodies.purge, older_than_days=self.retention_days)
        if self.files is not None:
            expired = await asyncio.to_thread(self.files.purge_expired)
            if expired:
                logger.info("retention: purged %d expired files", expired)
        self.runs += 1
        if deleted:
            logger.info(
                "retention: purged %d stored bodies older than %g days",
                deleted,
                self.retention_days,
            )
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the database may be down: try again next time
                logger.error("retention: purging stored bodies failed: %s", exc)
            await asyncio.sleep(self.every_seconds)
