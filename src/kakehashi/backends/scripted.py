"""A backend whose every answer a test scripts, in the manner of httpx's ``MockTransport``.

::

    def handler(call: ScriptedCall) -> Reply:
        if call.number == 0:
            raise UpstreamError("slow down", status_code=429, ..., retry_after=0.1)
        return chat_response("hello", call.request.model)

    backend = ScriptedBackend(handler, models=["m"])

The handler (plain or async) gets each call and returns the answer: a response for a whole
call, or for a stream an iterable of chunks in which an exception instance is raised when the
stream reaches it (a stream that breaks midway). Raising in the handler fails the call before
anything is answered. A stream without a final :class:`StreamUsage` gets one counting a token
per chunk.

Registered as an upstream (``Catalog.from_backends(upstreams=[...])``), a scripted backend serves
its model ids and globs as an upstream does, so that several of them are replicas of one id.
"""

from __future__ import annotations

import fnmatch
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from kakehashi.backends.base import (
    Call,
    ChatStream,
    CompletionStream,
    ServedModel,
    StreamUsage,
    served_as,
)
from kakehashi.capabilities import EVERYTHING, Capability
from kakehashi.wire.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
)
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionChoice, CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)

AnyRequest: TypeAlias = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
StreamItem: TypeAlias = ChatCompletionChunk | CompletionResponse | StreamUsage | BaseException
Reply: TypeAlias = (
    ChatCompletionResponse | CompletionResponse | EmbeddingResponse | Iterable[StreamItem]
)
Handler: TypeAlias = Callable[["ScriptedCall"], Reply | Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One call the backend received; ``number`` counts the calls before it."""

    capability: Capability
    request: AnyRequest
    stream: bool
    call: Call
    number: int


class ScriptedBackend:
    """A :class:`~kakehashi.backends.base.Backend` that answers with whatever ``handler``
    says. ``calls`` lists every call; ``open_streams`` counts streams not yet closed."""

    def __init__(
        self,
        handler: Handler,
        *,
        name: str = "scripted",
        models: Sequence[str] = ("scripted-model",),
        capabilities: frozenset[Capability] = EVERYTHING,
    ) -> None:
        self._handler = handler
        self._name = name
        self._patterns = tuple(models)
        exact = [m for m in models if not any(c in m for c in "*?[")]
        self._served = served_as(exact, owned_by="kakehashi-test", capabilities=capabilities)
        self.calls: list[ScriptedCall] = []
        self.open_streams = 0
        self.closed_streams = 0
        self.started = False

    @property
    def name(self) -> str:
        """The name given."""
        return self._name

    def served_models(self) -> Sequence[ServedModel]:
        """The models given (but their globs)."""
        return self._served

    def upstream_model(self, public_id: str) -> str | None:
        """``public_id`` if one of the models given is it or a glob matching it."""
        matched = any(fnmatch.fnmatchcase(public_id, p) for p in self._patterns)
        return public_id if matched else None

    async def start(self) -> None:
        """Nothing to start."""
        self.started = True

    async def stop(self) -> None:
        """Nothing to stop."""
        self.started = False

    async def _reply(
        self, capability: Capability, request: AnyRequest, call: Call, stream: bool
    ) -> Reply:
        scripted = ScriptedCall(capability, request, stream, call, len(self.calls))
        self.calls.append(scripted)
        reply = self._handler(scripted)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply

    async def _whole(self, capability: Capability, request: AnyRequest, call: Call) -> Reply:
        reply = await self._reply(capability, request, call, stream=False)
        usage = getattr(reply, "usage", None)
        if usage is not None:
            call.prompt_tokens = usage.prompt_tokens
            call.completion_tokens = getattr(usage, "completion_tokens", 0)
        return reply

    async def _stream(
        self, capability: Capability, request: AnyRequest, call: Call
    ) -> Iterable[StreamItem]:
        reply = await self._reply(capability, request, call, stream=True)
        if isinstance(reply, ChatCompletionResponse | CompletionResponse | EmbeddingResponse):
            raise TypeError(f"a stream was scripted as {type(reply).__name__}")
        return reply

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        """The handler's response."""
        reply = await self._whole(Capability.CHAT, request, call)
        assert isinstance(reply, ChatCompletionResponse), reply
        return reply

    async def completion(self, request: CompletionRequest, call: Call) -> CompletionResponse:
        """The handler's response."""
        reply = await self._whole(Capability.COMPLETIONS, request, call)
        assert isinstance(reply, CompletionResponse), reply
        return reply

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> EmbeddingResponse:
        """The handler's response."""
        reply = await self._whole(Capability.EMBEDDINGS, request, call)
        assert isinstance(reply, EmbeddingResponse), reply
        return reply

    async def stream_chat(self, request: ChatCompletionRequest, call: Call) -> ChatStream:
        """The handler's chunks."""
        items = await self._stream(Capability.CHAT, request, call)
        async for item in self._play(items, call):
            assert isinstance(item, ChatCompletionChunk | StreamUsage), item
            yield item

    async def stream_completion(self, request: CompletionRequest, call: Call) -> CompletionStream:
        """The handler's chunks."""
        items = await self._stream(Capability.COMPLETIONS, request, call)
        async for item in self._play(items, call):
            assert isinstance(item, CompletionResponse | StreamUsage), item
            yield item

    async def _play(
        self, items: Iterable[StreamItem], call: Call
    ) -> AsyncGenerator[ChatCompletionChunk | CompletionResponse | StreamUsage, None]:
        self.open_streams += 1
        try:
            ended = False
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, StreamUsage):
                    ended = True
                else:
                    call.completion_tokens += 1
                yield item
            if not ended:
                usage = Usage.of(call.prompt_tokens or 0, call.completion_tokens)
                yield StreamUsage(usage)
        finally:
            self.open_streams -= 1
            self.closed_streams += 1


# -- answers for handlers to return ----------------------------------------------------------


def chat_response(
    text: str, model: str, *, prompt_tokens: int = 3, completion_tokens: int | None = None
) -> ChatCompletionResponse:
    """A one-choice chat completion saying ``text``."""
    completion = len(text.split()) if completion_tokens is None else completion_tokens
    return ChatCompletionResponse(
        id=f"chatcmpl-scripted-{time.monotonic_ns()}",
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(index=0, message=ChatResponseMessage(content=text), finish_reason="stop")
        ],
        usage=Usage.of(prompt_tokens, completion),
    )


def chat_chunks(pieces: Sequence[str], model: str) -> list[ChatCompletionChunk]:
    """A one-choice chat stream: the role, each piece, then ``finish_reason: stop``."""
    chunk_id, created = f"chatcmpl-scripted-{time.monotonic_ns()}", int(time.time())

    def chunk(delta: ChatDelta, finish: bool = False) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=0, delta=delta, finish_reason="stop" if finish else None)
        return ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])

    return [
        chunk(ChatDelta(role="assistant", content="")),
        *(chunk(ChatDelta(content=p)) for p in pieces),
        chunk(ChatDelta(), finish=True),
    ]


def completion_response(text: str, model: str) -> CompletionResponse:
    """A one-choice legacy completion of ``text``."""
    return CompletionResponse(
        id=f"cmpl-scripted-{time.monotonic_ns()}",
        created=int(time.time()),
        model=model,
        choices=[CompletionChoice(index=0, text=text, finish_reason="stop")],
        usage=Usage.of(2, len(text.split())),
    )


def embedding_response(count: int, model: str, dimensions: int = 3) -> EmbeddingResponse:
    """``count`` unit vectors."""
    vector = [1.0] + [0.0] * (dimensions - 1)
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=vector) for i in range(count)],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=count, total_tokens=count),
    )
