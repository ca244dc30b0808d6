"""Rate limits: GCRA arithmetic, OpenAI's headers and 429s, refunds, budgets, Redis (shared by
two processes), and what happens when Redis is down."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kakehashi.errors import QuotaExceededError, RateLimitError, ServiceUnavailableError
from kakehashi.gateway.context import Principal, RequestContext
from kakehashi.platform import gcra
from kakehashi.platform.keys import ApiKey, ModelLimit
from kakehashi.platform.ratelimit import MemoryRateStore, PlatformLimiter, RateStore
from kakehashi.platform.ratelimit_redis import RedisRateStore
from support.server import free_port

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(**fields: object) -> ApiKey:
    base = ApiKey(id="key_a", name="team-a", redacted_value="sk-kh-ab...wxyz", created_at=0)
    return replace(base, **fields)  # type: ignore[arg-type]


def _ctx(key_id: str = "key_a") -> RequestContext:
    return RequestContext(Principal(key_id=key_id, label="team-a"), request_id="req_1")


def _limiter(store: RateStore, key: ApiKey | None, **options: object) -> PlatformLimiter:
    return PlatformLimiter(store, keys=lambda _id: key, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.9, "59.9s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_resets_are_go_durations(seconds: float, text: str) -> None:
    assert gcra.go_duration(seconds) == text


def test_gcra_lets_the_limit_through_at_once_then_one_per_interval() -> None:
    tat: float | None = None
    now = 100.0
    for n in range(60):
        tat, state = gcra.take(tat, now, limit=60, amount=1)
        assert state.allowed and state.remaining == 59 - n
    assert state.reset_after == pytest.approx(60.0)
    refused_tat, refused = gcra.take(tat, now, limit=60, amount=1)
    assert refused_tat is None and not refused.allowed
    assert refused.retry_after == pytest.approx(1.0) and refused.remaining == 0
    tat, state = gcra.take(tat, now + 1.0, limit=60, amount=1)  # one interval later
    assert state.allowed and state.remaining == 0
    never_tat, never = gcra.take(None, now, limit=60, amount=61)
    assert never_tat is None and math.isinf(never.retry_after)
    # giving back moves the bucket earlier, never before now
    assert gcra.adjust(tat, now + 1.0, limit=60, delta=-1000) is None
    assert gcra.adjust(None, now, limit=60, delta=30) == pytest.approx(now + 30)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RateStore]:
    if request.param == "memory":
        yield MemoryRateStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisRateStore.from_url(url)
    redis_store.prefix = f"test:{request.node.name}:"
    try:
        yield redis_store
    finally:
        await redis_store.close()


async def test_requests_per_minute_with_openai_headers_and_429(store: RateStore) -> None:
    limiter = _limiter(store, _key(rpm=3))
    remaining = []
    for _ in range(3):
        admission = await limiter.admit(_ctx(), "gpt-4", 10)
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
        assert "x-ratelimit-limit-tokens" not in admission.headers
    assert remaining == ["2", "1", "0"]
    assert admission.headers["x-ratelimit-reset-requests"] in ("1m0s", "59.999s", "59.998s")
    with pytest.raises(RateLimitError) as caught:
        await limiter.admit(_ctx(), "gpt-4", 10)
    error = caught.value
    body = error.to_dict()["error"]
    assert error.status_code == 429
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1." in body["message"]
    assert "Please try again in 19.9" in body["message"] or "try again in 20s" in body["message"]
    assert error.headers["retry-after"] == "20"
    assert 19_900 <= int(error.headers["retry-after-ms"]) <= 20_000
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_are_charged_up_front_and_settled(store: RateStore) -> None:
    limiter = _limiter(store, _key(tpm=1000))
    first = await limiter.admit(_ctx(), "m", 600)
    assert first.charged_tokens == 600
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    assert first.headers["x-ratelimit-reset-tokens"] in ("36s", "35.999s", "35.998s")
    with pytest.raises(RateLimitError) as caught:
        await limiter.admit(_ctx(), "m", 500)
    assert caught.value.error_type == "tokens"
    assert "Limit 1000, Used 600, Requested 500" in caught.value.message
    await limiter.settle(first, 100)  # it really used 100: 500 come back
    await limiter.flush()
    second = await limiter.admit(_ctx(), "m", 500)
    assert second.headers["x-ratelimit-remaining-tokens"] == "400"
    await limiter.settle(second, 900)  # and this one used more than estimated
    await limiter.flush()
    with pytest.raises(RateLimitError):
        await limiter.admit(_ctx(), "m", 100)


async def test_a_request_larger_than_the_limit_is_not_retryable(store: RateStore) -> None:
    limiter = _limiter(store, _key(tpm=1000))
    with pytest.raises(RateLimitError) as caught:
        await limiter.admit(_ctx(), "m", 1001)
    assert caught.value.error_type == "tokens"
    assert caught.value.message.startswith("Request too large for the API key")
    assert caught.value.headers == {"x-should-retry": "false"}


async def test_per_model_limits_apply_beside_the_keys_own(store: RateStore) -> None:
    key = _key(rpm=100, model_limits={"gpt-4": ModelLimit(rpm=1, tpm=50)})
    limiter = _limiter(store, key)
    admission = await limiter.admit(_ctx(), "gpt-4", 20)
    # the tightest bucket of each resource is the one shown
    assert admission.headers["x-ratelimit-limit-requests"] == "1"
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "30"
    with pytest.raises(RateLimitError) as caught:
        await limiter.admit(_ctx(), "gpt-4", 20)
    assert caught.value.message.startswith("Rate limit reached for gpt-4 on API key 'team-a'")
    other = await limiter.admit(_ctx(), "gpt-3.5-turbo", 20)  # another model is not limited
    assert other.headers["x-ratelimit-remaining-requests"] == "98"
    # a refused request charged nothing anywhere (all or nothing)
    assert "x-ratelimit-limit-tokens" not in other.headers


async def test_keys_do_not_share_buckets(store: RateStore) -> None:
    limiter = PlatformLimiter(store, keys=lambda key_id: _key(id=key_id, rpm=1))
    await limiter.admit(_ctx("key_a"), "m", 1)
    await limiter.admit(_ctx("key_b"), "m", 1)
    with pytest.raises(RateLimitError):
        await limiter.admit(_ctx("key_a"), "m", 1)


async def test_unstored_keys_get_the_default_limits() -> None:
    limiter = PlatformLimiter(MemoryRateStore(), keys=lambda _id: None, defaults=ModelLimit(rpm=1))
    await limiter.admit(_ctx("cfg_1"), "m", 1)
    await limiter.admit(_ctx("cfg_2"), "m", 1)
    with pytest.raises(RateLimitError):
        await limiter.admit(_ctx("cfg_1"), "m", 1)
    unlimited = PlatformLimiter(MemoryRateStore(), keys=lambda _id: None)
    assert (await unlimited.admit(_ctx(), "m", 5)).headers == {}


async def test_budget_exhaustion_is_insufficient_quota() -> None:
    pending = {"key_a": 0.0}
    key = _key(budget_usd=1.0, spent_usd=0.75)
    limiter = _limiter(MemoryRateStore(), key, pending_spend=lambda k: pending[k])
    await limiter.admit(_ctx(), "m", 1)
    pending["key_a"] = 0.25  # spend not yet written to the ledger counts too
    with pytest.raises(QuotaExceededError) as caught:
        await limiter.admit(_ctx(), "m", 1)
    error = caught.value
    assert error.status_code == 429
    assert error.to_dict()["error"]["type"] == "insufficient_quota"
    assert error.code == "insufficient_quota"
    assert error.headers == {"x-should-retry": "false"}
    assert "$1.00 budget" in error.message


async def _unreachable_store() -> RedisRateStore:
    return RedisRateStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)


async def test_redis_down_fails_open_loudly(caplog: pytest.LogCaptureFixture) -> None:
    store = await _unreachable_store()
    limiter = _limiter(store, _key(rpm=1, tpm=10))
    for _ in range(3):
        admission = await limiter.admit(_ctx(), "m", 5)
        assert admission.headers == {}
        await limiter.settle(admission, 1)
    await limiter.flush()
    await store.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # loud, but once, not once per request
    assert "ADMITTING REQUESTS WITHOUT LIMITS" in errors[0].getMessage()


async def test_redis_down_fails_closed_when_configured() -> None:
    store = await _unreachable_store()
    limiter = _limiter(store, _key(rpm=1), fail_open=False)
    with pytest.raises(ServiceUnavailableError) as caught:
        await limiter.admit(_ctx(), "m", 5)
    assert caught.value.status_code == 503
    await store.close()


@pytest.mark.slow
def test_two_processes_sharing_one_redis_limit_stay_within_it(
    redis_url: str, tmp_path: Path
) -> None:
    limit = 300  # per minute; each process tries far more than that
    argv: Callable[[int], list[str]] = lambda n: [  # noqa: E731
        sys.executable, str(HERE / "_limiter_worker.py"), redis_url, str(limit), "1500",
        f"worker-{n}",
    ]  # fmt: skip
    workers = [subprocess.Popen(argv(n), stdout=subprocess.PIPE, text=True) for n in range(2)]
    reports = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out
        reports.append(json.loads(out))
    admitted = sum(r["admitted"] for r in reports)
    started = min(r["started"] for r in reports)
    finished = max(r["finished"] for r in reports)
    # GCRA: a full bucket's burst, plus what refills while the processes run.
    allowed = limit + math.ceil((finished - started) * limit / 60)
    assert all(r["admitted"] > 0 for r in reports)  # both really competed
    assert limit <= admitted <= allowed * 1.01, (admitted, allowed, reports)
