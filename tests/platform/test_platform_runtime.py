"""The assembled platform on SQLite and on PostgreSQL + Redis, as the gateway will drive it:
authenticate, admit, record, settle; budgets close once the ledger shows the spend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kakehashi.errors import QuotaExceededError, RateLimitError
from kakehashi.gateway.context import RequestContext, UsageRecord
from kakehashi.platform.keys import NewKey
from kakehashi.platform.ledger import ModelPrices
from kakehashi.platform.ratelimit_redis import RedisRateStore
from kakehashi.platform.runtime import Platform
from kakehashi.platform.storage import tables
from kakehashi.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql+redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path, api_keys=["sk-bootstrap"])
    url = request.getfixturevalue("pg").create_database(f"runtime_{abs(hash(request.node.name))}")
    return Settings(
        data_dir=tmp_path,
        api_keys=["sk-bootstrap"],
        database_url=url,
        redis_url=request.getfixturevalue("redis_url"),
    )


async def test_a_key_runs_into_its_rate_limit_then_its_budget(settings: Settings) -> None:
    prices = {"gpt-4": ModelPrices(input=1000.0, output=1000.0)}  # $0.001 per token
    platform = Platform.open(settings, prices=prices.get)
    assert (settings.redis_url is not None) == isinstance(platform.rate_store, RedisRateStore)
    if isinstance(platform.rate_store, RedisRateStore):
        platform.rate_store.prefix = f"runtime:{id(platform)}:"
    await platform.start()
    try:
        key, secret = platform.keys.create(
            NewKey(name="app", rpm=3, budget_usd=0.05), tiers=settings.tiers
        )
        assert platform.key_store.auth_required
        principal = await platform.key_store.authenticate(secret)
        assert principal is not None
        assert await platform.key_store.authenticate("sk-bootstrap") is not None

        async def call(n: int) -> None:
            ctx = RequestContext(principal, request_id=f"req_{n}")
            admission = await platform.limiter.admit(ctx, "gpt-4", 30)
            assert admission.headers["x-ratelimit-limit-requests"] == "3"
            platform.ledger.record(
                UsageRecord(
                    request_id=ctx.request_id,
                    attempt=0,
                    key_id=principal.key_id,
                    model="gpt-4",
                    backend="local",
                    endpoint="chat.completions",
                    started_at=1_750_000_000.0 + n,
                    latency=0.01,
                    status="success",
                    prompt_tokens=10,
                    completion_tokens=10,
                )
            )
            await platform.limiter.settle(admission, 20)

        await asyncio.gather(call(0), call(1))  # $0.04 spent
        await call(2)  # admitted at $0.04; brings the key to $0.06
        with pytest.raises(QuotaExceededError):  # before the ledger wrote a row
            await call(3)
        platform.ledger.flush()
        assert platform.keys.get(key.id).spent_usd == pytest.approx(0.06)
        with pytest.raises(QuotaExceededError):  # and after
            await call(4)

        # raise the budget: the rate limit is what stops the next call now
        with platform.db.connection() as conn:
            conn.execute(
                tables.api_keys.update()
                .where(tables.api_keys.c.id == key.id)
                .values(budget_usd=10.0)
            )
        platform.key_store.forget(key.id)
        assert await platform.key_store.authenticate(secret) is not None
        with pytest.raises(RateLimitError) as caught:
            await call(5)
        assert caught.value.error_type == "requests"
    finally:
        await platform.stop()
