"""The gateway service around scripted backends: routing, retries, fallbacks, the circuit
breaker, the limiter and one usage record per attempt, without HTTP."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from kakehashi.backends.base import ServedModel, StreamUsage
from kakehashi.backends.fake import FakeBackend
from kakehashi.backends.scripted import (
    Reply,
    ScriptedBackend,
    ScriptedCall,
    chat_chunks,
    chat_response,
)
from kakehashi.errors import (
    ConflictError,
    ContextLengthExceededError,
    GatewayTimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    UpstreamError,
)
from kakehashi.gateway.catalog import Catalog
from kakehashi.gateway.context import (
    OPEN_ACCESS,
    Admission,
    MemoryUsageSink,
    Principal,
    Priority,
    RequestContext,
)
from kakehashi.gateway.fallback import RetryPolicy
from kakehashi.gateway.routing import Circuit, Router
from kakehashi.gateway.service import Answer, GatewayService, StreamAnswer
from kakehashi.settings import ModelSpec
from kakehashi.wire.chat import ChatCompletionRequest
from kakehashi.wire.common import Usage

T = TypeVar("T")
FAST = RetryPolicy(max_retries=2, backoff=0.001, backoff_max=0.002, max_retry_after=1.0)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def ctx(principal: Principal = OPEN_ACCESS, deadline: float | None = None) -> RequestContext:
    return RequestContext(principal, f"req-{time.monotonic_ns()}", deadline=deadline)


def chat_request(model: str = "m", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hello there"}], **fields}
    )


def rate_limited(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(
        "slow down",
        status_code=429,
        error_type="requests",
        code="rate_limit_exceeded",
        retryable=True,
        retry_after=retry_after,
    )


def server_error() -> UpstreamError:
    return UpstreamError(
        "boom", status_code=500, error_type="server_error", code="server_error", retryable=True
    )


def answering(text: str = "hi") -> Callable[[ScriptedCall], Reply]:
    def handler(call: ScriptedCall) -> Reply:
        if call.stream:
            return chat_chunks(text.split(), call.request.model)
        return chat_response(text, call.request.model)

    return handler


def service_of(
    *backends: ScriptedBackend | FakeBackend,
    upstreams: list[ScriptedBackend] | None = None,
    specs: list[ModelSpec] | None = None,
    sink: MemoryUsageSink | None = None,
    router: Router | None = None,
    **kwargs: Any,
) -> GatewayService:
    catalog = Catalog.from_backends(backends, specs or [], upstreams=upstreams or [])
    return GatewayService(
        catalog,
        max_n=4,
        usage=sink or MemoryUsageSink(),
        router=router or Router(),
        retry=kwargs.pop("retry", FAST),
        rng=random.Random(0),
        **kwargs,
    )


async def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]


# -- catalog and routing ----------------------------------------------------------------------


def test_catalog_resolves_every_public_id() -> None:
    first, second = FakeBackend(["a", "a-alias"]), FakeBackend(["org/b"])
    catalog = Catalog.from_backends([first, second])
    assert [e.id for e in catalog.entries()] == ["a", "a-alias", "org/b"]
    assert catalog.resolve("a-alias", principal=OPEN_ACCESS).backend is first
    assert catalog.resolve("org/b", principal=OPEN_ACCESS).backend is second
    assert catalog.backends() == [first, second]
    with pytest.raises(ModelNotFoundError) as caught:
        catalog.resolve("c", principal=OPEN_ACCESS)
    assert caught.value.status_code == 404
    assert caught.value.param is None  # OpenAI sends null
    assert caught.value.message == "The model `c` does not exist or you do not have access to it."


def test_catalog_rejects_duplicate_ids() -> None:
    catalog = Catalog.from_backends([FakeBackend(["a"])])
    with pytest.raises(ConflictError):
        catalog.add(ServedModel("a", 0), FakeBackend())


def test_service_checks_n_and_routes_by_model_on_the_local_engine() -> None:
    backend = FakeBackend(["a"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)
    assert [m.id for m in service.list_models(ctx()).data] == ["a"]
    assert service.get_model("a", ctx()).owned_by == "kakehashi-test"

    async def scenario() -> None:
        await service.start()
        assert backend.engine.started
        request = chat_request("a", n=2, max_tokens=1)
        answer = await service.chat(request, ctx())
        assert isinstance(answer, Answer)
        assert len(answer.body.choices) == 2
        with pytest.raises(InvalidRequestError) as caught:
            await service.chat(request.model_copy(update={"n": 5}), ctx())
        assert caught.value.param == "n"
        with pytest.raises(ModelNotFoundError):
            await service.chat(request.model_copy(update={"model": "b", "stream": True}), ctx())
        await service.stop()
        assert not backend.engine.started

    run(scenario())
    [record] = sink.records
    assert (record.model, record.backend, record.status) == ("a", "local", "success")
    assert record.completion_tokens == 2 and record.prompt_tokens > 0


def test_replicas_are_balanced_by_outstanding_requests() -> None:
    gate = asyncio.Event()

    async def slow(call: ScriptedCall) -> Reply:
        await gate.wait()
        return chat_response("x", call.request.model)

    one = ScriptedBackend(slow, name="one", models=["m"])
    two = ScriptedBackend(slow, name="two", models=["m"])
    service = service_of(upstreams=[one, two])

    async def scenario() -> None:
        tasks = [asyncio.create_task(service.chat(chat_request(), ctx())) for _ in range(6)]
        await asyncio.sleep(0.01)
        assert (len(one.calls), len(two.calls)) == (3, 3)
        gate.set()
        await asyncio.gather(*tasks)
        for _ in range(4):  # one at a time: round robin
            await service.chat(chat_request(), ctx())
        assert (len(one.calls), len(two.calls)) == (5, 5)

    run(scenario())


def test_globs_route_ids_the_catalog_does_not_list() -> None:
    lab = ScriptedBackend(answering(), name="lab", models=["lab-*"])
    service = service_of(upstreams=[lab], specs=[ModelSpec(id="gpt-4", serves="lab-big")])
    assert [m.id for m in service.list_models(ctx()).data] == ["gpt-4"]
    answer = run(service.chat(chat_request("lab-small"), ctx()))
    assert isinstance(answer, Answer) and answer.body.model == "lab-small"
    answer = run(service.chat(chat_request("gpt-4"), ctx()))
    assert isinstance(answer, Answer) and answer.body.model == "gpt-4"
    assert [c.call.model for c in lab.calls] == ["lab-small", "lab-big"]
    with pytest.raises(ModelNotFoundError):
        run(service.chat(chat_request("other"), ctx()))


# -- retries and fallbacks ----------------------------------------------------------------------


def test_retry_after_a_429_honours_retry_after_then_succeeds() -> None:
    def handler(call: ScriptedCall) -> Reply:
        if call.number == 0:
            raise rate_limited(retry_after=0.2)
        return chat_response("ok", call.request.model)

    backend = ScriptedBackend(handler, models=["m"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)
    started = time.monotonic()
    answer = run(service.chat(chat_request(), ctx()))
    assert time.monotonic() - started >= 0.2
    assert isinstance(answer, Answer) and answer.body.choices[0].message.content == "ok"
    assert [(r.attempt, r.status, r.error_code) for r in sink.records] == [
        (1, "error", "rate_limit_exceeded"),
        (2, "success", None),
    ]


def test_a_batch_lines_priority_and_batch_id_reach_the_backend_and_the_ledger() -> None:
    backend = ScriptedBackend(answering(), models=["m"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)
    line = RequestContext(OPEN_ACCESS, "line-1", priority=Priority.BATCH, batch_id="batch_1")
    run(service.chat(chat_request(), line))
    run(service.chat(chat_request(), ctx()))
    assert [c.call.priority for c in backend.calls] == [1, 0]
    assert [r.batch_id for r in sink.records] == ["batch_1", None]


def test_a_bad_request_is_not_retried() -> None:
    def handler(call: ScriptedCall) -> Reply:
        raise InvalidRequestError("nope", param="temperature")

    backend = ScriptedBackend(handler, models=["m"])
    with pytest.raises(InvalidRequestError):
        run(service_of(backend).chat(chat_request(), ctx()))
    assert len(backend.calls) == 1


def test_retries_are_spent_then_the_fallback_answers() -> None:
    def failing(call: ScriptedCall) -> Reply:
        raise server_error()

    primary = ScriptedBackend(failing, name="primary", models=["m"])
    spare = ScriptedBackend(answering("spare"), name="spare", models=["spare-model"])
    sink = MemoryUsageSink()
    specs = [ModelSpec(id="m", fallbacks=("spare-model",))]
    service = service_of(primary, spare, specs=specs, sink=sink)
    answer = run(service.chat(chat_request(), ctx()))
    assert isinstance(answer, Answer)
    assert answer.body.model == "spare-model"
    assert answer.body.choices[0].message.content == "spare"
    assert len(primary.calls) == 3  # one try and two retries
    assert [(r.model, r.status) for r in sink.records] == [
        ("m", "error"),
        ("m", "error"),
        ("m", "error"),
        ("spare-model", "success"),
    ]
    assert [r.attempt for r in sink.records] == [1, 2, 3, 4]


def test_context_length_falls_back_at_once_to_a_longer_model() -> None:
    def short(call: ScriptedCall) -> Reply:
        raise ContextLengthExceededError("too long", param="messages")

    primary = ScriptedBackend(short, name="short", models=["m"])
    longer = ScriptedBackend(answering("long"), name="long", models=["m-long"])
    service = service_of(primary, longer, specs=[ModelSpec(id="m", fallbacks=("m-long",))])
    answer = run(service.chat(chat_request(), ctx()))
    assert isinstance(answer, Answer) and answer.body.model == "m-long"
    assert len(primary.calls) == 1


def test_a_fallback_the_key_may_not_use_is_skipped() -> None:
    def failing(call: ScriptedCall) -> Reply:
        raise server_error()

    primary = ScriptedBackend(failing, name="primary", models=["m"])
    spare = ScriptedBackend(answering(), name="spare", models=["spare-model"])
    service = service_of(primary, spare, specs=[ModelSpec(id="m", fallbacks=("spare-model",))])
    listed = Principal(key_id="k", label="k", allowed_models=frozenset({"m"}))
    with pytest.raises(UpstreamError):
        run(service.chat(chat_request(), ctx(listed)))
    assert spare.calls == []


def test_a_long_retry_after_moves_on_and_is_passed_to_the_client() -> None:
    def handler(call: ScriptedCall) -> Reply:
        raise rate_limited(retry_after=60)

    backend = ScriptedBackend(handler, models=["m"])
    with pytest.raises(UpstreamError) as caught:
        run(service_of(backend).chat(chat_request(), ctx()))
    assert len(backend.calls) == 1
    assert caught.value.headers["retry-after"] == "60"
    assert caught.value.headers["x-should-retry"] == "true"


def test_the_deadline_gives_up_a_hanging_backend() -> None:
    async def hang(call: ScriptedCall) -> Reply:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    backend = ScriptedBackend(hang, models=["m"])
    sink = MemoryUsageSink()
    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError):
        run(service_of(backend, sink=sink).chat(chat_request(), ctx(deadline=started + 0.3)))
    assert time.monotonic() - started < 5
    assert sink.records[0].error_code == "timeout"


# -- the circuit breaker ------------------------------------------------------------------------


def test_the_breaker_opens_after_failures_and_a_probe_closes_it() -> None:
    now = [0.0]
    broken = [True]

    def handler(call: ScriptedCall) -> Reply:
        if broken[0]:
            raise server_error()
        return chat_response("back", call.request.model)

    backend = ScriptedBackend(handler, models=["m"])
    router = Router(failures=3, cooldown=10.0, clock=lambda: now[0])
    service = service_of(backend, router=router, retry=RetryPolicy(max_retries=0))
    for _ in range(3):
        with pytest.raises(UpstreamError):
            run(service.chat(chat_request(), ctx()))
    assert len(backend.calls) == 3
    with pytest.raises(ServiceUnavailableError) as caught:
        run(service.chat(chat_request(), ctx()))
    assert len(backend.calls) == 3  # open: not even tried
    assert caught.value.headers["retry-after"] == "10"

    now[0] = 11.0  # cooled down: one probe goes through, fails, and the circuit opens again
    with pytest.raises(UpstreamError):
        run(service.chat(chat_request(), ctx()))
    assert len(backend.calls) == 4
    with pytest.raises(ServiceUnavailableError):
        run(service.chat(chat_request(), ctx()))

    now[0] = 22.0
    broken[0] = False
    answer = run(service.chat(chat_request(), ctx()))
    assert isinstance(answer, Answer)
    [deployment] = service.catalog.get("m").deployments  # type: ignore[union-attr]
    health = router.health(deployment)
    assert health.circuit is Circuit.CLOSED and health.trips == 2


def test_requests_go_to_the_healthy_replica_while_one_is_cooling_down() -> None:
    def failing(call: ScriptedCall) -> Reply:
        raise server_error()

    bad = ScriptedBackend(failing, name="bad", models=["m"])
    good = ScriptedBackend(answering(), name="good", models=["m"])
    service = service_of(upstreams=[bad, good], router=Router(failures=1, cooldown=60))
    for _ in range(6):
        run(service.chat(chat_request(), ctx()))
    assert len(bad.calls) == 1
    assert len(good.calls) == 6


# -- streams and usage --------------------------------------------------------------------------


def test_stream_usage_is_recorded_and_forwarded_only_when_asked() -> None:
    backend = ScriptedBackend(answering("a b c"), models=["m"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)

    async def stream(**fields: Any) -> list[Any]:
        answer = await service.chat(chat_request(stream=True, **fields), ctx())
        assert isinstance(answer, StreamAnswer)
        return await collect(answer.chunks)

    plain = run(stream())
    assert all("usage" not in c.model_dump() for c in plain)
    assert all(c.choices for c in plain)
    with_usage = run(stream(stream_options={"include_usage": True}))
    assert all("usage" in c.model_dump() for c in with_usage)
    assert all(c.usage is None for c in with_usage[:-1])
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 5
    assert [(r.status, r.streamed, r.completion_tokens) for r in sink.records] == [
        ("success", True, 5),
        ("success", True, 5),
    ]
    assert all(r.time_to_first_token is not None for r in sink.records)


def test_a_stream_failing_before_its_first_chunk_is_retried() -> None:
    def handler(call: ScriptedCall) -> Reply:
        if call.number == 0:
            return [server_error()]
        return chat_chunks(["fine"], call.request.model)

    backend = ScriptedBackend(handler, models=["m"])
    service = service_of(backend)

    async def scenario() -> list[Any]:
        answer = await service.chat(chat_request(stream=True), ctx())
        assert isinstance(answer, StreamAnswer)
        return await collect(answer.chunks)

    chunks = run(scenario())
    assert [c.choices[0].delta.content for c in chunks[1:2]] == ["fine"]
    assert backend.closed_streams == 2


def test_a_stream_breaking_midway_raises_and_is_not_retried() -> None:
    def handler(call: ScriptedCall) -> Reply:
        return [*chat_chunks(["a", "b"], call.request.model)[:2], ServerError("the wire broke")]

    backend = ScriptedBackend(handler, models=["m"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)

    async def scenario() -> list[Any]:
        answer = await service.chat(chat_request(stream=True), ctx())
        assert isinstance(answer, StreamAnswer)
        seen = []
        with pytest.raises(ServerError):
            async for chunk in answer.chunks:
                seen.append(chunk)
        return seen

    assert len(run(scenario())) == 2
    assert len(backend.calls) == 1
    [record] = sink.records
    assert (record.status, record.completion_tokens) == ("error", 2)


def test_an_abandoned_stream_is_recorded_as_aborted_and_closed() -> None:
    def handler(call: ScriptedCall) -> Reply:
        return chat_chunks([str(i) for i in range(50)], call.request.model)

    backend = ScriptedBackend(handler, models=["m"])
    sink = MemoryUsageSink()
    service = service_of(backend, sink=sink)

    async def scenario() -> None:
        answer = await service.chat(chat_request(stream=True), ctx())
        assert isinstance(answer, StreamAnswer)
        chunks = answer.chunks
        for _ in range(4):
            await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]

    run(scenario())
    assert backend.open_streams == 0
    [record] = sink.records
    assert record.status == "aborted" and record.error_code == "client_disconnected"
    assert record.completion_tokens == 4
    assert record.prompt_tokens > 0  # the estimate: the backend never said


def test_usage_prices_become_a_cost() -> None:
    backend = ScriptedBackend(answering("one two"), models=["m"])
    sink = MemoryUsageSink()
    specs = [ModelSpec(id="m", input_price=1.0, output_price=2.0)]
    run(service_of(backend, specs=specs, sink=sink).chat(chat_request(), ctx()))
    [record] = sink.records
    assert record.cost_usd == pytest.approx((3 * 1.0 + 2 * 2.0) / 1_000_000)


# -- the limiter --------------------------------------------------------------------------------


class CountingLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: list[tuple[str, int]] = []
        self.settled: list[int] = []

    async def admit(self, ctx: RequestContext, model: str, estimated_tokens: int) -> Admission:
        if len(self.admitted) >= self.limit:
            raise RateLimitError("Rate limit reached for requests.")
        self.admitted.append((model, estimated_tokens))
        return Admission(estimated_tokens, {"x-ratelimit-remaining-requests": "0"})

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        self.settled.append(used_tokens)


def test_the_limiter_is_charged_prompt_and_max_tokens_and_settled_with_usage() -> None:
    backend = ScriptedBackend(answering("a b c"), models=["m"])
    limiter = CountingLimiter(limit=2)
    service = service_of(backend, limiter=limiter)
    answer = run(service.chat(chat_request(max_tokens=100), ctx()))
    assert isinstance(answer, Answer)
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    [(model, estimate)] = limiter.admitted
    assert model == "m" and 100 < estimate < 130
    assert limiter.settled == [3 + 3]

    async def stream() -> None:
        answer = await service.chat(chat_request(stream=True, max_tokens=10), ctx())
        assert isinstance(answer, StreamAnswer)
        await collect(answer.chunks)

    run(stream())
    assert limiter.settled[-1] == 5  # no prompt count from the scripted stream: 0 + 5 chunks
    with pytest.raises(RateLimitError):
        run(service.chat(chat_request(), ctx()))
    assert len(backend.calls) == 2


def test_stream_items_end_with_usage() -> None:
    async def scenario() -> list[Any]:
        backend = FakeBackend(["f"])
        await backend.start()
        from kakehashi.backends.base import Call

        items = [i async for i in backend.stream_chat(chat_request("f", max_tokens=3), Call("f"))]
        await backend.stop()
        return items

    items = run(scenario())
    assert isinstance(items[-1], StreamUsage)
    assert items[-1].usage == Usage.of(items[-1].usage.prompt_tokens, 3)
    assert not any(isinstance(i, StreamUsage) for i in items[:-1])
