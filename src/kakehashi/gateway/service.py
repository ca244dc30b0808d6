"""What the routes call: one method per OpenAI operation, each given the request and its
:class:`~kakehashi.gateway.context.RequestContext`.

Every call goes the same way: resolve the model for the principal and the day (access,
lifecycle headers), ask the :class:`~kakehashi.gateway.context.Limiter` (charging the prompt
and the completion it may produce), then try the model's deployments, least busy first, and
its fallbacks under :mod:`~kakehashi.gateway.fallback`'s policy. Each attempt hands one
:class:`~kakehashi.gateway.context.UsageRecord` to the
:class:`~kakehashi.gateway.context.UsageSink`, whether it succeeded, failed, or was a stream the
client abandoned. A stream is committed to an attempt once its first chunk arrived, and never
retried after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from kakehashi.backends.base import Backend, Call, ChatStream, CompletionStream, StreamUsage
from kakehashi.capabilities import Capability
from kakehashi.errors import (
    GatewayTimeoutError,
    InvalidRequestError,
    KakehashiError,
    NotFoundError,
    ServiceUnavailableError,
)
from kakehashi.gateway.catalog import Catalog, CatalogEntry, Deployment
from kakehashi.gateway.context import (
    Admission,
    Limiter,
    MemoryUsageSink,
    RequestContext,
    Unlimited,
    UsageRecord,
    UsageSink,
)
from kakehashi.gateway.estimate import completion_estimate, prompt_estimate
from kakehashi.gateway.fallback import Next, RetryPolicy, is_deployment_failure, next_step
from kakehashi.gateway.lifecycle import ENDPOINT_DEPRECATIONS, Clock, Status, system_clock
from kakehashi.gateway.routing import Router
from kakehashi.gateway.tokens import ModelTokens, context_window
from kakehashi.gateway.usage import AttemptLog, cost_usd, status_of
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionChoice, CompletionRequest, CompletionResponse
from kakehashi.wire.edits import EditChoice, EditRequest, EditResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from kakehashi.wire.models import ModelCard, ModelList

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Req = TypeVar("Req", bound=ChatCompletionRequest | CompletionRequest | EmbeddingRequest)
StreamReq = TypeVar("StreamReq", bound=ChatCompletionRequest | CompletionRequest)
Chunk = TypeVar("Chunk", bound=ChatCompletionChunk | CompletionResponse)

EDIT_SYSTEM_PROMPT = (
    "You are a precise text editor. Apply the instruction to the text and reply with the "
    "edited text only: no explanations, no quotes, no preamble."
)
DROPPED_PARAMS_HEADER = "x-kakehashi-dropped-params"

# What OpenAI answers when a model is used on the wrong endpoint.
_WRONG_ENDPOINT = {
    Capability.CHAT: "This is not a chat model and thus not supported in the "
    "v1/chat/completions endpoint. Did you mean to use v1/completions?",
    Capability.COMPLETIONS: "This is a chat model and not supported in the v1/completions "
    "endpoint. Did you mean to use v1/chat/completions?",
}


@dataclass(frozen=True, slots=True)
class Answer(Generic[T_co]):
    """A whole response and the headers to send with it."""

    body: T_co
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamAnswer(Generic[T_co]):
    """A stream of chunks (its first already received) and the headers to send with it."""

    chunks: AsyncIterator[T_co]
    headers: dict[str, str]


@dataclass(slots=True)
class _Plan:
    """One request on its way: where it may go and what it has used so far."""

    ctx: RequestContext
    capability: Capability
    chain: list[CatalogEntry]
    headers: dict[str, str]
    prompt_estimate: int
    estimate: int
    admission: Admission | None = None
    used_tokens: int = 0
    attempts: int = 0


@dataclass(slots=True)
class _Attempt:
    """One try of a plan at one deployment. :meth:`finish` records it, exactly once."""

    plan: _Plan
    entry: CatalogEntry
    deployment: Deployment
    call: Call
    number: int
    streamed: bool
    log: AttemptLog = field(default_factory=AttemptLog)
    finished: bool = False


class GatewayService:
    """The operations of the OpenAI API, independent of HTTP."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_n: int,
        clock: Clock = system_clock,
        limiter: Limiter | None = None,
        usage: UsageSink | None = None,
        router: Router | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self.max_n = max_n
        self.clock = clock
        self.limiter: Limiter = limiter or Unlimited()
        self.usage: UsageSink = usage if usage is not None else MemoryUsageSink()
        self.router = router or Router()
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._warned: set[tuple[str, str]] = set()

    async def start(self) -> None:
        """Start every backend (stopping those already started if one fails)."""
        async with contextlib.AsyncExitStack() as stack:
            for backend in self.catalog.backends():
                await backend.start()
                stack.push_async_callback(backend.stop)
            stack.pop_all()

    async def stop(self) -> None:
        """Stop every backend."""
        for backend in reversed(self.catalog.backends()):
            await backend.stop()

    # -- models ----------------------------------------------------------------------------

    def list_models(self, ctx: RequestContext) -> ModelList:
        """``GET /v1/models``: what the principal may use and is not retired."""
        ids = self.catalog.visible(principal=ctx.principal, today=self.clock())
        return ModelList(data=[self._card(i, ctx) for i in ids])

    def get_model(self, model_id: str, ctx: RequestContext) -> ModelCard:
        """``GET /v1/models/{model}``, or 404 exactly as for an unknown model."""
        return self._card(model_id, ctx)

    def _card(self, model_id: str, ctx: RequestContext) -> ModelCard:
        today = self.clock()
        entry = self.catalog.resolve(model_id, principal=ctx.principal, today=today)
        shutdown = entry.lifecycle.shutdown_on
        card = ModelCard(id=model_id, created=entry.created, owned_by=entry.owned_by)
        window = context_window(entry)
        if window is not None:
            card.context_window = card.max_model_len = window
        if shutdown is not None and entry.status(today) is Status.DEPRECATED:
            card.shutdown_date = shutdown.isoformat()
        return card

    def endpoint_headers(self, capability: Capability) -> dict[str, str]:
        """``Deprecation`` headers of a deprecated endpoint (``edits``), else none."""
        endpoint = ENDPOINT_DEPRECATIONS.get(capability)
        return endpoint.headers(self.clock()) if endpoint is not None else {}

    def tokens(self, model_id: str, ctx: RequestContext) -> ModelTokens:
        """``/tokenize`` and ``/detokenize`` for ``model_id`` as the principal may use it."""
        entry = self.catalog.resolve(model_id, principal=ctx.principal, today=self.clock())
        return ModelTokens(entry)

    # -- the operations --------------------------------------------------------------------

    async def chat(
        self, request: ChatCompletionRequest, ctx: RequestContext
    ) -> Answer[ChatCompletionResponse] | StreamAnswer[ChatCompletionChunk]:
        """A chat completion: whole, or (``stream: true``) as chunks."""
        self._check_n(request.n)
        plan = await self._plan(request, ctx, Capability.CHAT)
        if request.stream:
            return await self._stream(plan, request, _open_chat, _chat_usage_chunk)
        return await self._whole(plan, request, _chat)

    async def completion(
        self, request: CompletionRequest, ctx: RequestContext
    ) -> Answer[CompletionResponse] | StreamAnswer[CompletionResponse]:
        """A legacy completion: whole, or (``stream: true``) as chunks."""
        self._check_n(request.n)
        plan = await self._plan(request, ctx, Capability.COMPLETIONS)
        if request.stream:
            return await self._stream(plan, request, _open_completion, _completion_usage_chunk)
        return await self._whole(plan, request, _complete)

    async def embeddings(
        self, request: EmbeddingRequest, ctx: RequestContext
    ) -> Answer[EmbeddingResponse]:
        """Embed the request's inputs; ``dimensions`` only where the model allows it."""
        plan = await self._plan(request, ctx, Capability.EMBEDDINGS)
        entry = plan.chain[0]
        if request.dimensions is not None and not entry.dimensions:
            await self._settle(plan)
            raise InvalidRequestError(
                f"This model does not support specifying dimensions: `{entry.id}` always "
                "returns its full vector.",
                param="dimensions",
            )
        return await self._whole(plan, request, _embed)

    async def edit(self, request: EditRequest, ctx: RequestContext) -> Answer[EditResponse]:
        """An edit, answered by a chat completion with an instruction-following prompt."""
        self._check_n(request.n)
        chat = ChatCompletionRequest.model_validate(
            {
                "model": request.model,
                "messages": [
                    {"role": "system", "content": EDIT_SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": f"Instruction: {request.instruction}\n\nText:\n"
                        f"{request.input or ''}",
                    },
                ],
                "n": request.n,
                "temperature": request.temperature,
                "top_p": request.top_p,
            }
        )
        plan = await self._plan(chat, ctx, Capability.EDITS)
        answer = await self._whole(plan, chat, _chat)
        response = answer.body
        edited = EditResponse(
            created=response.created,
            choices=[
                EditChoice(
                    text=choice.message.content or "",
                    index=choice.index,
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                )
                for choice in response.choices
            ],
            usage=response.usage or Usage.of(0, 0),
        )
        return Answer(edited, answer.headers)

    def _check_n(self, n: int | None) -> None:
        if n is not None and n > self.max_n:
            raise InvalidRequestError(
                f"Invalid 'n': integer above maximum value. Expected a value <= {self.max_n}, "
                f"but got {n} instead.",
                param="n",
                code="integer_above_max_value",
            )

    # -- planning --------------------------------------------------------------------------

    async def _plan(
        self,
        request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        ctx: RequestContext,
        capability: Capability,
    ) -> _Plan:
        """Resolve the model and its fallbacks for the principal, then ask the limiter."""
        today = self.clock()
        entry = self.catalog.resolve(request.model, principal=ctx.principal, today=today)
        if capability not in entry.capabilities:
            message = _WRONG_ENDPOINT.get(
                capability,
                f"The model `{request.model}` does not support the v1/{capability.value} endpoint.",
            )
            raise NotFoundError(message, param="model")
        headers = self.endpoint_headers(capability)
        headers.update(entry.lifecycle.headers(today))
        if entry.status(today) is Status.DEPRECATED:
            self._warn_once(ctx, entry)
        chain = [entry, *self._fallbacks(entry, ctx, capability)]
        prompt = prompt_estimate(request)
        estimate = prompt
        if not isinstance(request, EmbeddingRequest):
            estimate += completion_estimate(request)
        plan = _Plan(ctx, capability, chain, headers, prompt, estimate)
        plan.admission = await self.limiter.admit(ctx, entry.id, estimate)
        headers.update(plan.admission.headers)
        return plan

    def _fallbacks(
        self, entry: CatalogEntry, ctx: RequestContext, capability: Capability
    ) -> list[CatalogEntry]:
        """The fallback chain's entries the principal may use today (each once)."""
        found: list[CatalogEntry] = []
        seen = {entry.id}
        for model_id in entry.fallbacks:
            if model_id in seen:
                continue
            seen.add(model_id)
            try:
                fallback = self.catalog.resolve(
                    model_id, principal=ctx.principal, today=self.clock()
                )
            except KakehashiError:
                continue
            if capability in fallback.capabilities:
                found.append(fallback)
        return found

    def _warn_once(self, ctx: RequestContext, entry: CatalogEntry) -> None:
        label = ctx.principal.label
        if (label, entry.id) in self._warned:
            return
        self._warned.add((label, entry.id))
        logger.warning(
            "key %s uses `%s`, which is %s", label, entry.id, entry.lifecycle.describe(self.clock())
        )

    async def _settle(self, plan: _Plan) -> None:
        if plan.admission is not None:
            admission, plan.admission = plan.admission, None
            await self.limiter.settle(admission, plan.used_tokens)

    # -- attempts --------------------------------------------------------------------------

    async def _attempts(
        self,
        plan: _Plan,
        request: Req,
        streamed: bool,
        try_once: Callable[[Backend, Req, Call], Awaitable[T]],
    ) -> tuple[T, _Attempt]:
        """Run ``try_once`` until it succeeds, retrying and falling back as the policy says.

        The attempt that succeeded is returned unfinished (its caller records it); every
        failed one is recorded here.
        """
        deadline = plan.ctx.deadline
        last: KakehashiError | None = None
        for entry in plan.chain:
            addressed = request if request.model == entry.id else _readdress(request, entry.id)
            retries = 0
            avoid: Deployment | None = None
            while True:
                deployment = self.router.pick(entry.deployments, avoid)
                if deployment is None:
                    if avoid is None:  # not tried at all: say why
                        last = self._cooling_down(entry)
                    break
                attempt = self._begin(plan, entry, deployment, streamed)
                try:
                    result = await _within(
                        deadline, try_once(deployment.backend, addressed, attempt.call)
                    )
                except KakehashiError as error:
                    self._finish(attempt, error=error)
                    last = error
                except Exception as error:
                    self._finish(attempt, error=error)
                    raise
                except BaseException as error:  # cancelled: the client went away
                    self._finish(attempt, error=error, aborted=True)
                    raise
                else:
                    return result, attempt
                step = next_step(last)
                if step is Next.GIVE_UP:
                    raise last
                if step is Next.RETRY:
                    delay = self.retry.delay(retries, last, self._rng)
                    if delay is not None and _time_left(deadline, delay):
                        logger.info(
                            "%s: retrying `%s` in %.2f s after: %s",
                            plan.ctx.request_id,
                            entry.id,
                            delay,
                            last.message,
                        )
                        retries += 1
                        avoid = deployment
                        await asyncio.sleep(delay)
                        continue
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        assert last is not None
        raise last

    def _cooling_down(self, entry: CatalogEntry) -> ServiceUnavailableError:
        wait = self.router.retry_in(entry.deployments)
        error = ServiceUnavailableError(
            f"Every deployment of `{entry.id}` is cooling down after failures; "
            f"try again in {max(1, round(wait))} s."
        )
        error.retry_after = wait
        return error

    def _begin(
        self, plan: _Plan, entry: CatalogEntry, deployment: Deployment, streamed: bool
    ) -> _Attempt:
        plan.attempts += 1
        call = Call(
            model=deployment.model,
            deadline=plan.ctx.deadline,
            request_id=plan.ctx.request_id,
            priority=int(plan.ctx.priority),
        )
        self.router.begin(deployment)
        return _Attempt(plan, entry, deployment, call, plan.attempts, streamed)

    def _finish(
        self,
        attempt: _Attempt,
        *,
        usage: Usage | EmbeddingUsage | None = None,
        error: BaseException | None = None,
        aborted: bool = False,
    ) -> None:
        """Record ``attempt`` (once) and tell the router how it went."""
        if attempt.finished:
            return
        attempt.finished = True
        deployment, call, plan = attempt.deployment, attempt.call, attempt.plan
        self.router.end(deployment)
        if isinstance(error, KakehashiError):
            if is_deployment_failure(error):
                self.router.failed(deployment)
            elif error.status_code == 429:
                self.router.rate_limited(deployment, error.retry_after)
        elif error is None:
            self.router.succeeded(deployment)
        if usage is not None:
            prompt = usage.prompt_tokens
            completion = getattr(usage, "completion_tokens", 0)
            details = getattr(usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", 0) or 0
        else:
            # An abandoned upstream stream never says: charge the estimate.
            prompt = call.prompt_tokens if call.prompt_tokens is not None else 0
            if aborted and call.prompt_tokens is None:
                prompt = plan.prompt_estimate
            completion, cached = call.completion_tokens, 0
        plan.used_tokens += prompt + completion
        entry = attempt.entry
        record = UsageRecord(
            request_id=plan.ctx.request_id,
            attempt=attempt.number,
            key_id=plan.ctx.principal.key_id,
            model=entry.id,
            backend=deployment.backend.name,
            endpoint=plan.capability.value,
            started_at=attempt.log.started_at,
            latency=attempt.log.latency,
            status=status_of(error, aborted),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            time_to_first_token=attempt.log.time_to_first_token,
            streamed=attempt.streamed,
            error_code=_error_code(error),
            cost_usd=cost_usd(prompt, completion, entry.input_price, entry.output_price),
            batch_id=plan.ctx.batch_id,
        )
        try:
            self.usage.record(record)
        except Exception:  # a sink's failure must not fail the request
            logger.exception("the usage sink failed to take a record")

    # -- whole answers ----------------------------------------------------------------------

    async def _whole(
        self,
        plan: _Plan,
        request: Req,
        invoke: Callable[[Backend, Req, Call], Awaitable[T]],
    ) -> Answer[T]:
        try:
            body, attempt = await self._attempts(plan, request, False, invoke)
            attempt.log.first_token_now()
            usage = getattr(body, "usage", None)
            self._finish(attempt, usage=usage)
            return Answer(body, _answer_headers(plan, attempt))
        finally:
            await self._settle(plan)

    # -- streams ----------------------------------------------------------------------------

    async def _stream(
        self,
        plan: _Plan,
        request: StreamReq,
        open_stream: Callable[[Backend, StreamReq, Call], AsyncIterator[Chunk | StreamUsage]],
        usage_chunk: Callable[[Chunk, Usage], Chunk],
    ) -> StreamAnswer[Chunk]:
        async def first_of(
            backend: Backend, addressed: StreamReq, call: Call
        ) -> tuple[Chunk | StreamUsage, AsyncIterator[Chunk | StreamUsage]]:
            stream = open_stream(backend, addressed, call)
            try:
                return await anext(stream), stream
            except BaseException:
                await _close(stream)
                raise

        try:
            (first, stream), attempt = await self._attempts(plan, request, True, first_of)
        except BaseException:
            await self._settle(plan)
            raise
        relay = self._relay(plan, attempt, first, stream, request.include_usage, usage_chunk)
        return StreamAnswer(relay, _answer_headers(plan, attempt))

    async def _relay(
        self,
        plan: _Plan,
        attempt: _Attempt,
        first: Chunk | StreamUsage,
        stream: AsyncIterator[Chunk | StreamUsage],
        include_usage: bool,
        usage_chunk: Callable[[Chunk, Usage], Chunk],
    ) -> AsyncIterator[Chunk]:
        """The client's side of a committed stream: chunks as they come (``usage: null`` on
        each when the client asked for usage), the usage chunk only if asked, and the attempt
        recorded however the stream ends."""
        last: Chunk | None = None
        usage: Usage | None = None
        try:
            item = first
            while True:
                if isinstance(item, StreamUsage):
                    usage = item.usage
                    if include_usage and last is not None:
                        yield usage_chunk(last, usage)
                else:
                    if attempt.log.first_token is None and _has_text(item):
                        attempt.log.first_token_now()
                    if include_usage:
                        item.usage = None
                    last = item
                    yield item
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    break
        except KakehashiError as error:
            self._finish(attempt, error=error)
            raise
        except (GeneratorExit, asyncio.CancelledError) as error:
            self._finish(attempt, error=error, aborted=True)
            raise
        except Exception as error:
            self._finish(attempt, error=error)
            raise
        else:
            self._finish(attempt, usage=usage)
        finally:
            await _close(stream)
            await self._settle(plan)


# -- helpers ---------------------------------------------------------------------------------


def _chat(
    backend: Backend, request: ChatCompletionRequest, call: Call
) -> Awaitable[ChatCompletionResponse]:
    return backend.chat(request, call)


def _open_chat(backend: Backend, request: ChatCompletionRequest, call: Call) -> ChatStream:
    return backend.stream_chat(request, call)


def _complete(
    backend: Backend, request: CompletionRequest, call: Call
) -> Awaitable[CompletionResponse]:
    return backend.completion(request, call)


def _open_completion(backend: Backend, request: CompletionRequest, call: Call) -> CompletionStream:
    return backend.stream_completion(request, call)


def _embed(backend: Backend, request: EmbeddingRequest, call: Call) -> Awaitable[EmbeddingResponse]:
    return backend.embeddings(request, call)


def _readdress(request: Req, model: str) -> Req:
    return cast(Req, request.model_copy(update={"model": model}))


async def _within(deadline: float | None, work: Awaitable[T]) -> T:
    """``work``, given up (504) at ``deadline``."""
    if deadline is None:
        return await work
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            return await work
    except TimeoutError:
        raise GatewayTimeoutError(
            "The request took longer than its deadline allowed and was given up."
        ) from None


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _time_left(deadline: float | None, delay: float) -> bool:
    return deadline is None or time.monotonic() + delay < deadline


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _error_code(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, KakehashiError):
        return error.code or error.error_type
    if isinstance(error, GeneratorExit | asyncio.CancelledError):
        return "client_disconnected"
    return "server_error"


def _answer_headers(plan: _Plan, attempt: _Attempt) -> dict[str, str]:
    headers = dict(plan.headers)
    if attempt.call.dropped_params:
        headers[DROPPED_PARAMS_HEADER] = ",".join(attempt.call.dropped_params)
    return headers


def _has_text(chunk: ChatCompletionChunk | CompletionResponse) -> bool:
    """Whether ``chunk`` carries generated text (its first does: time to first token)."""
    for choice in chunk.choices:
        text = choice.text if isinstance(choice, CompletionChoice) else choice.delta.content
        if text:
            return True
    return False


def _chat_usage_chunk(last: ChatCompletionChunk, usage: Usage) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=last.id,
        created=last.created,
        model=last.model,
        choices=[],
        system_fingerprint=last.system_fingerprint,
        usage=usage,
    )


def _completion_usage_chunk(last: CompletionResponse, usage: Usage) -> CompletionResponse:
    return CompletionResponse(
        id=last.id,
        created=last.created,
        model=last.model,
        choices=[],
        system_fingerprint=last.system_fingerprint,
        usage=usage,
    )
