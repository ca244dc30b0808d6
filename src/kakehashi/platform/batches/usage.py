"""Usage records of batch lines, kept out of the ledger's own queue.

The gateway hands every attempt's record to one :class:`~kakehashi.gateway.context.UsageSink`.
For a batch line the runner wants those records itself, to commit them in the same transaction
as the line's result (so a line is billed exactly when its result is kept). The gateway's sink
is therefore a :class:`BatchUsageTap` in front of the ledger: records of a request the runner
is waiting on go to the runner; all others pass through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kakehashi.gateway.context import UsageRecord, UsageSink


class BatchUsageTap:
    """A :class:`~kakehashi.gateway.context.UsageSink` that diverts the records of the requests
    opened with :meth:`capture` and passes every other record to ``inner``."""

    def __init__(self, inner: UsageSink) -> None:
        self.inner = inner
        self._open: dict[str, list[UsageRecord]] = {}

    def record(self, usage: UsageRecord) -> None:
        captured = self._open.get(usage.request_id) if usage.batch_id is not None else None
        if captured is None:
            self.inner.record(usage)
        else:
            captured.append(usage)

    @contextlib.contextmanager
    def capture(self, request_id: str) -> Iterator[list[UsageRecord]]:
        """Collect the records of ``request_id`` for the duration of the block."""
        records: list[UsageRecord] = []
        self._open[request_id] = records
        try:
            yield records
        finally:
            self._open.pop(request_id, None)
