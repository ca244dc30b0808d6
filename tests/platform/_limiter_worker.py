"""One of two processes that share a Redis rate limit (run by test_platform_ratelimit.py).

Usage: _limiter_worker.py REDIS_URL RPM ATTEMPTS KEY_LABEL. Prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from kakehashi.errors import RateLimitError
from kakehashi.gateway.context import Principal, RequestContext
from kakehashi.platform.keys import ApiKey
from kakehashi.platform.ratelimit import PlatformLimiter
from kakehashi.platform.ratelimit_redis import RedisRateStore


async def main(url: str, rpm: int, attempts: int, label: str) -> dict[str, float]:
    store = RedisRateStore.from_url(url)
    store.prefix = "shared-test:"
    key = ApiKey(id="key_shared", name="shared", redacted_value="-", created_at=0, rpm=rpm)
    limiter = PlatformLimiter(store, keys=lambda _id: key, fail_open=False)
    ctx = RequestContext(Principal(key_id="key_shared", label=label), request_id="r")
    admitted = 0
    started = time.time()
    for _ in range(attempts):
        try:
            await limiter.admit(ctx, "m", 1)
        except RateLimitError:
            continue
        admitted += 1
    finished = time.time()
    await store.close()
    return {"admitted": admitted, "started": started, "finished": finished}


if __name__ == "__main__":
    url, rpm, attempts, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(asyncio.run(main(url, rpm, attempts, label))))
