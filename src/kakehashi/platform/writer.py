"""A background thread that writes queued items to the database in batches.

``put`` never blocks and never touches the database: the request path only appends to a
deque. The thread wakes when ``flush_seconds`` have passed since the oldest unwritten item, or
when a full batch is waiting, and writes everything in one transaction. A failed write is
retried with backoff, keeping the items (and their order). ``close`` writes what is left
before returning, so a clean shutdown loses nothing; a killed process loses at most what
arrived in the last ``flush_seconds`` plus the batch being written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from kakehashi.platform.storage.db import Database

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """Subclasses say how a batch is written (:meth:`write`) and may react once it is
    committed (:meth:`written`)."""

    name = "writer"

    def __init__(
        self,
        db: Database,
        *,
        flush_seconds: float = 0.2,
        max_batch: int = 2000,
        max_queued: int = 1_000_000,
    ) -> None:
        self.db = db
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._queue: deque[T] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._dropped = 0
        self.written_total = 0

    # -- the request path -----------------------------------------------------------------

    def put(self, item: T) -> None:
        """Queue one item (never blocks)."""
        if len(self._queue) >= self.max_queued:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                logger.error(
                    "%s: %d items waiting for the database; dropped %d",
                    self.name,
                    len(self._queue),
                    self._dropped,
                )
            return
        self._queue.append(item)
        if len(self._queue) >= self.max_batch:
            with self._wake:
                self._wake.notify()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the writing thread."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"kakehashi-{self.name}", daemon=True
        )
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            self._wake.notify()
        while self._queue or self._in_flight:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        thread.join(timeout)
        self._thread = None
        if self._queue:
            logger.error(
                "%s: %d items could not be written before shutdown", self.name, len(self._queue)
            )

    @property
    def queued(self) -> int:
        """Items waiting to be written."""
        return len(self._queue) + self._in_flight

    # -- the writing thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                if not self._stopping and len(self._queue) < self.max_batch:
                    self._wake.wait(max(self.flush_seconds, backoff))
                stopping = self._stopping
            if not self._queue:
                if stopping:
                    return
                continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._in_flight = len(batch)
            try:
                with self.db.connection() as conn:
                    outcome = self.write(conn, batch)
            except Exception as exc:  # the database is down or refused: keep the batch
                self._queue.extendleft(reversed(batch))
                self._in_flight = 0
                backoff = min(5.0, max(0.1, backoff * 2))
                logger.error(
                    "%s: writing %d items failed, retrying in %.1f s: %s",
                    self.name,
                    len(batch),
                    backoff,
                    exc,
                )
                if stopping and backoff >= 5.0:
                    return  # close() reports what is left
                continue
            backoff = 0.0
            self.written_total += len(batch)
            try:
                self.written(batch, outcome)
            finally:
                self._in_flight = 0

    def write(self, conn: Connection, batch: Sequence[T]) -> Any:
        """Write ``batch`` inside the open transaction of ``conn``; what it returns is handed
        to :meth:`written`."""
        raise NotImplementedError

    def written(self, batch: Sequence[T], outcome: Any) -> None:
        """Called after ``batch`` was committed."""
