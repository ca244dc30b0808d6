"""The platform's own figures, each against a baseline measured in the same run.

    python benchmarks/platform_path.py            # full run (~1 min)
    python benchmarks/platform_path.py --quick    # smoke run

1. Ledger rows/s: the LedgerSink's batched writer draining N usage records, on SQLite (WAL)
   and on a private PostgreSQL with its durable defaults (fsync on), against writing the
   same kind of row one transaction at a time.
2. Limiter admit() latency: in process and on a private redis-server, against the no-op
   limiter (``Unlimited``); and the Redis round trips per check, from Redis's own command
   counters.
3. Key lookup: a cached key against one read from the database.

4. The request path: sequential chat completions through the whole app (middleware, auth,
   limiter, gateway, ledger) on the scripted fake backend, in process, with the platform on
   (SQLite; PostgreSQL + Redis) against the platform off (no keys, no limits, no ledger).

Targets (issue 18): the ledger sustains >= 2,000 rows/s on SQLite and on PostgreSQL; a
limiter check takes <= 1 Redis round trip; the platform costs <= 0.5 ms p50 per request.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable

import httpx
import redis
import sqlalchemy as sa

from kakehashi.api.app import create_app
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend
from kakehashi.gateway.context import Principal, RequestContext, Unlimited, UsageRecord
from kakehashi.platform.keys import ApiKey, DatabaseKeyStore, KeyRepository, NewKey
from kakehashi.platform.ledger import LedgerSink, ModelPrices
from kakehashi.platform.ratelimit import MemoryRateStore, PlatformLimiter
from kakehashi.platform.ratelimit_redis import RedisRateStore
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from kakehashi.settings import DEFAULT_TIERS, Settings
from support.services import postgres_server, redis_server


def _record(n: int, tag: str) -> UsageRecord:
    return UsageRecord(
        request_id=f"{tag}_{n}",
        attempt=0,
        key_id="key_bench",
        model="gpt-4",
        backend="local",
        endpoint="chat.completions",
        started_at=time.time(),
        latency=0.05,
        status="success",
        prompt_tokens=120,
        completion_tokens=40,
        cached_tokens=20,
        time_to_first_token=0.01,
        streamed=n % 2 == 0,
    )


def ledger_rows_per_second(db: Database, rows: int) -> float:
    sink = LedgerSink(db, prices={"gpt-4": ModelPrices(30.0, 60.0)}.get)
    sink.start()
    started = time.perf_counter()
    for n in range(rows):
        sink.record(_record(n, f"batched{started}"))
    sink.close()
    return rows / (time.perf_counter() - started)


def one_by_one_rows_per_second(db: Database, rows: int) -> float:
    started = time.perf_counter()
    for n in range(rows):
        record = _record(n, f"single{started}")
        with db.connection() as conn:
            conn.execute(
                tables.usage_records.insert().values(
                    request_id=record.request_id,
                    attempt=0,
                    key_id=record.key_id,
                    model=record.model,
                    backend=record.backend,
                    endpoint=record.endpoint,
                    started_at_ms=int(record.started_at * 1000),
                    latency_ms=50.0,
                    status="success",
                    prompt_tokens=120,
                    completion_tokens=40,
                    cached_tokens=20,
                    streamed=False,
                    cost_usd=0.0,
                )
            )
    return rows / (time.perf_counter() - started)


async def _latencies(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    for _ in range(min(200, count)):
        await call()
    out = []
    for _ in range(count):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1e6)
    return sorted(out)


def _p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def limiter_figures(redis_url: str, checks: int) -> dict[str, list[float] | float]:
    key = ApiKey(
        id="key_bench", name="bench", redacted_value="-", created_at=0, rpm=10**9, tpm=10**12
    )
    ctx = RequestContext(Principal(key_id="key_bench", label="bench"), request_id="r")
    unlimited = Unlimited()
    memory = PlatformLimiter(MemoryRateStore(), keys=lambda _id: key)
    store = RedisRateStore.from_url(redis_url)
    on_redis = PlatformLimiter(store, keys=lambda _id: key, fail_open=False)
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    figures: dict[str, list[float] | float] = {
        "no-op limiter": await _latencies(lambda: unlimited.admit(ctx, "m", 100), checks),
        "in process": await _latencies(lambda: memory.admit(ctx, "m", 100), checks),
    }
    client.config_resetstat()
    figures["on Redis"] = await _latencies(lambda: on_redis.admit(ctx, "m", 100), checks)
    stats = client.info("commandstats")
    # Only script calls come from the client; the rest (TIME, GET, SET) run inside them.
    trips = sum(
        stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval", "script")
    )
    inside = sum(v["calls"] for v in stats.values()) - trips
    figures["round trips per check"] = trips / (checks + min(200, checks))
    figures["commands inside the script"] = inside / (checks + min(200, checks))
    await store.close()
    client.close()
    return figures


async def key_lookup_figures(db: Database, lookups: int) -> dict[str, list[float]]:
    repo = KeyRepository(db)
    _, secret = repo.create(NewKey(name=f"bench-{time.time()}"), tiers=DEFAULT_TIERS)
    cached = DatabaseKeyStore(repo, cache_seconds=3600)
    uncached = DatabaseKeyStore(repo, cache_seconds=0)
    return {
        "cached": await _latencies(lambda: cached.authenticate(secret), lookups),
        "from the database": await _latencies(lambda: uncached.authenticate(secret), lookups),
    }


async def request_path_latencies(settings: Settings, requests: int) -> list[float]:
    """Microseconds per chat completion through the app for ``settings``, after a warm-up; with the
    platform on, as a key with request and token limits."""
    app = create_app(settings, backend=FakeBackend())
    headers: dict[str, str] = {}
    async with app.router.lifespan_context(app):
        platform = app.state.platform
        if platform is not None:
            new = NewKey(name="bench", rpm=10**9, tpm=2**31 - 1)
            _, secret = platform.keys.create(new, tiers=DEFAULT_TIERS)
            headers["Authorization"] = f"Bearer {secret}"
        body = {
            "model": FAKE_MODEL_ID,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers
        ) as client:

            async def one() -> None:
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text

            return await _latencies(one, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, single, checks = (5_000, 500, 1_000) if args.quick else (50_000, 2_000, 5_000)

    print(f"kakehashi platform benchmark ({'quick' if args.quick else 'full'})\n")
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_server(durable=True) as pg,
        redis_server() as rs,
    ):
        databases = {
            "SQLite (WAL)": Database.open(None, Path(tmp)),
            "PostgreSQL": Database.open(pg.create_database("bench"), Path(tmp)),
        }
        print(
            f"1. ledger: {rows:,} usage rows through LedgerSink; baseline {single:,} rows, "
            "one transaction each"
        )
        for name, db in databases.items():
            batched = ledger_rows_per_second(db, rows)
            one = one_by_one_rows_per_second(db, single)
            with db.connection() as conn:
                count = conn.execute(
                    sa.select(sa.func.count()).select_from(tables.usage_records)
                ).scalar_one()
            verdict = "meets" if batched >= 2000 else "MISSES"
            print(
                f"   {name:<13} {batched:>9,.0f} rows/s batched   {one:>7,.0f} rows/s one by one  "
                f"({batched / one:.0f}x; {count:,} rows stored; {verdict} >= 2,000 rows/s)"
            )

        print(f"\n2. limiter admit(), {checks:,} checks, 1 request + tokens, per-key limits (µs)")
        figures = asyncio.run(limiter_figures(rs.url, checks))
        base = _p(figures["no-op limiter"], 0.5)  # type: ignore[arg-type]
        for name in ("no-op limiter", "in process", "on Redis"):
            values = figures[name]
            assert isinstance(values, list)
            print(
                f"   {name:<14} p50 {_p(values, 0.5):8.1f}   p99 {_p(values, 0.99):8.1f}   "
                f"(p50 {(_p(values, 0.5) / base):.0f}x the no-op)"
            )
        trips, inside = figures["round trips per check"], figures["commands inside the script"]
        print(
            f"   Redis round trips per check: {trips:.2f} (target <= 1), running {inside:.1f} "
            "commands inside the script"
        )

        print(f"\n3. key lookup, {checks:,} authentications (µs)")
        for name, db in databases.items():
            lookups = asyncio.run(key_lookup_figures(db, checks))
            print(
                "   "
                + name
                + ": "
                + "; ".join(
                    f"{kind} p50 {_p(v, 0.5):.1f} p99 {_p(v, 0.99):.1f}"
                    for kind, v in lookups.items()
                )
            )
        for db in databases.values():
            db.close()

        requests = 500 if args.quick else 3_000
        print(f"\n4. request path: {requests:,} sequential chat completions, fake backend (ms)")
        base_dir = Path(tmp)
        setups = {
            "platform off": Settings(data_dir=base_dir / "off", platform=False),
            "SQLite": Settings(data_dir=base_dir / "sqlite"),
            "PostgreSQL + Redis": Settings(
                data_dir=base_dir / "pg",
                database_url=pg.create_database("bench_path"),
                redis_url=rs.url,
            ),
        }
        off = None
        for name, settings in setups.items():
            values = asyncio.run(request_path_latencies(settings, requests))
            p50 = _p(values, 0.5) / 1000
            off = p50 if off is None else off
            added = "" if p50 == off else f"   +{p50 - off:.3f} ms p50 over off (target <= 0.5)"
            print(
                f"   {name:<19} p50 {p50:6.3f}  p99 {_p(values, 0.99) / 1000:6.3f}  "
                f"{1e6 / (sum(values) / len(values)):7,.0f} req/s{added}"
            )


if __name__ == "__main__":
    main()
