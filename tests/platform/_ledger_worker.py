"""Records usage at a steady rate until killed (run by test_platform_ledger.py).

Usage: _ledger_worker.py DATABASE_URL ROWS_PER_SECOND. Prints how many rows it has recorded,
every 50 rows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from kakehashi.gateway.context import UsageRecord
from kakehashi.platform.ledger import LedgerSink
from kakehashi.platform.storage.db import Database


def main(url: str, rate: float) -> None:
    db = Database.open(url, Path(tempfile.gettempdir()))
    sink = LedgerSink(db)
    sink.start()
    started = time.monotonic()
    n = 0
    while True:
        sink.record(
            UsageRecord(
                request_id=f"req_{n}",
                attempt=0,
                key_id="key_w",
                model="m",
                backend="local",
                endpoint="chat.completions",
                started_at=time.time(),
                latency=0.01,
                status="success",
                prompt_tokens=10,
                completion_tokens=5,
            )
        )
        n += 1
        if n % 50 == 0:
            print(n, flush=True)
        pause = started + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
