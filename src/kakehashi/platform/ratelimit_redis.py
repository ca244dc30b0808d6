"""Rate-limit buckets in Redis, shared by every replica: one Lua script call per check.

The script runs the GCRA of :mod:`kakehashi.platform.gcra` on all of a request's buckets
atomically, on Redis's own clock (so replicas need not agree on the time), and writes only if
every bucket allows the request: one round trip. Each bucket is one string key holding its
TAT in milliseconds, expiring once the bucket would be full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kakehashi.platform.gcra import WINDOW_SECONDS, CellState
from kakehashi.platform.ratelimit import Cell, LimiterUnavailableError

# KEYS: the buckets. ARGV: window (ms), then a limit and an amount per bucket.
# Returns per bucket {allowed, remaining, reset_ms, retry_ms} (retry_ms -1: never fits).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[1])
local out, tats, refused = {}, {}, false
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local amount = tonumber(ARGV[2 * i + 1])
  local interval = window / limit
  local start = tonumber(redis.call('GET', KEYS[i]) or now)
  if start < now then start = now end
  local new_tat = start + amount * interval
  local allow_at = new_tat - window
  if allow_at > now + 1e-6 then
    refused = true
    local retry = allow_at - now
    if amount > limit then retry = -1 end
    local left = math.floor((now + window - start) / interval + 1e-6)
    out[i] = {0, math.max(0, left), math.ceil(start - now), math.ceil(retry)}
  else
    tats[i] = new_tat
    local left = math.floor((now + window - new_tat) / interval + 1e-6)
    out[i] = {1, math.max(0, left), math.ceil(new_tat - now), 0}
  end
end
if not refused then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
  end
end
return out
"""

# KEYS: the buckets. ARGV: window (ms), then a limit and a delta per bucket.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[1])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local delta = tonumber(ARGV[2 * i + 1])
  local start = tonumber(redis.call('GET', KEYS[i]) or now)
  if start < now then start = now end
  local tat = start + delta * window / limit
  if tat > now then
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
"""


class RedisRateStore:
    """GCRA buckets in Redis under ``prefix``; a call that fails or takes longer than
    ``timeout`` seconds raises :class:`LimiterUnavailableError`."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "kakehashi:rl:") -> None:
        self.client = client
        self.prefix = prefix
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5) -> RedisRateStore:
        """A store on the Redis at ``url``."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )
        return cls(client)

    def _args(self, cells: Sequence[Cell], values: Sequence[int]) -> list[int | float]:
        args: list[int | float] = [WINDOW_SECONDS * 1000]
        for cell, value in zip(cells, values, strict=True):
            args += [cell.limit, value]
        return args

    async def take(self, cells: Sequence[Cell], amounts: Sequence[int]) -> list[CellState]:
        keys = [self.prefix + cell.name for cell in cells]
        try:
            rows = await self._take(keys=keys, args=self._args(cells, amounts))
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        states = []
        for cell, (allowed, remaining, reset_ms, retry_ms) in zip(cells, rows, strict=True):
            retry = math.inf if retry_ms < 0 else retry_ms / 1000
            states.append(CellState(bool(allowed), cell.limit, remaining, reset_ms / 1000, retry))
        return states

    async def adjust(self, cells: Sequence[Cell], deltas: Sequence[int]) -> None:
        keys = [self.prefix + cell.name for cell in cells]
        try:
            await self._adjust(keys=keys, args=self._args(cells, deltas))
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
