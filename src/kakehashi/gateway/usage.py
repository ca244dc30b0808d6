"""Usage records: one per backend attempt, built by :class:`AttemptLog` and handed to a
:class:`~kakehashi.gateway.context.UsageSink`; and :class:`JsonlUsageSink`, a sink that appends
them to a file as JSON lines (``usage_log`` in the settings)."""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kakehashi.gateway.context import UsageRecord, UsageSink, UsageStatus

logger = logging.getLogger(__name__)


def cost_usd(
    prompt_tokens: int,
    completion_tokens: int,
    input_price: float | None,
    output_price: float | None,
) -> float | None:
    """The cost at per-1M-token prices, or None when the model has no price."""
    if input_price is None and output_price is None:
        return None
    cost = prompt_tokens * (input_price or 0.0) + completion_tokens * (output_price or 0.0)
    return round(cost / 1_000_000, 10)


@dataclasses.dataclass(slots=True)
class AttemptLog:
    """The timings of one attempt, from its start to its record."""

    started_at: float = dataclasses.field(default_factory=time.time)
    started: float = dataclasses.field(default_factory=time.monotonic)
    first_token: float | None = None

    def first_token_now(self) -> None:
        """Note the time of the first token (once)."""
        if self.first_token is None:
            self.first_token = time.monotonic()

    @property
    def latency(self) -> float:
        """Seconds since the attempt started."""
        return time.monotonic() - self.started

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the start to the first token, if one came."""
        return None if self.first_token is None else self.first_token - self.started


_STOP = object()


class JsonlUsageSink:
    """Appends each record to ``path`` as one JSON line, from a writer thread (``record`` only
    queues). :meth:`close` writes what is queued and stops the thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="kakehashi-usage-log", daemon=True)
        self._thread.start()

    def record(self, usage: UsageRecord) -> None:
        """Queue ``usage`` for writing."""
        self._queue.put(usage)

    def close(self) -> None:
        """Write everything queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _write(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                out.write(json.dumps(dataclasses.asdict(item)) + "\n")  # type: ignore[call-overload]
                if self._queue.empty():
                    out.flush()


class TeeUsageSink:
    """Hands every record to each of ``sinks`` (the ledger and a JSON-lines log, say); one
    sink's failure does not keep the record from the others."""

    def __init__(self, sinks: Sequence[UsageSink]) -> None:
        self.sinks = tuple(sinks)

    def record(self, usage: UsageRecord) -> None:
        """Give ``usage`` to every sink."""
        for sink in self.sinks:
            try:
                sink.record(usage)
            except Exception:
                logger.exception("a usage sink failed to take a record")


def status_of(error: BaseException | None, aborted: bool) -> UsageStatus:
    """The record status of an attempt that ended with ``error`` (None: success)."""
    if aborted:
        return "aborted"
    return "success" if error is None else "error"
