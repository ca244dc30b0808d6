"""Upstream backends: any OpenAI-compatible server over HTTP, one ``[[upstreams]]`` entry each.

Each upstream has one pool of keep-alive connections (:mod:`~kakehashi.backends.upstream_http`:
aiohttp's HTTP/1.1, or httpx where an ``https`` upstream may offer HTTP/2) and a provider
:mod:`preset <kakehashi.backends.presets>` for its quirks.
A request goes out as the client sent it, with the upstream's own model id, minus the
parameters the route may drop (listed in :attr:`Call.dropped_params`); a parameter the provider
cannot honour and the route may not drop is refused with a 400 naming it. Streams always ask
the upstream for ``include_usage``; the usage chunk becomes the stream's final
:class:`~kakehashi.backends.base.StreamUsage`. Every upstream error is normalized to OpenAI's
envelope by the preset; connection failures and timeouts become 502 and 504.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kakehashi.backends.base import (
    Call,
    ChatStream,
    CompletionStream,
    ServedModel,
    StreamUsage,
    served_as,
)
from kakehashi.backends.presets import Preset, normalize, preset, read_problem
from kakehashi.backends.upstream_http import (
    Timeouts,
    TransportFailure,
    UpstreamHttp,
    UpstreamResponse,
    open_client,
)
from kakehashi.capabilities import EVERYTHING, Capability
from kakehashi.errors import (
    BadGatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from kakehashi.settings import UpstreamSpec
from kakehashi.wire.base import RequestModel, forwarded
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", ChatCompletionChunk, CompletionResponse)
_GLOB = frozenset("*?[")
_ENDPOINTS = {
    Capability.CHAT: "/chat/completions",
    Capability.COMPLETIONS: "/completions",
    Capability.EMBEDDINGS: "/embeddings",
}


class UpstreamConfigError(ValueError):
    """An ``[[upstreams]]`` entry cannot be used as configured."""


class UpstreamBackend:
    """One OpenAI-compatible upstream server."""

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.preset: Preset = preset(spec.provider)
        base_url = spec.base_url or self.preset.base_url
        if base_url is None:
            raise UpstreamConfigError(f"upstream `{spec.name}` needs a base_url")
        base_url = base_url.rstrip("/")
        self.base_url = self.preset.base_url_aliases.get(base_url, base_url)
        env = os.environ if environ is None else environ
        key_env = spec.api_key_env or self.preset.api_key_env
        self._api_key = env.get(key_env) if key_env else None
        if key_env and spec.api_key_env and not self._api_key:
            logger.warning("upstream %s: %s is not set; sending no key", spec.name, key_env)
        self._exact = [m for m in spec.models if not _GLOB & set(m)]
        self._globs = [m for m in spec.models if _GLOB & set(m)]
        self._served = served_as(self._exact, owned_by=spec.name, capabilities=EVERYTHING)
        limits = spec.timeouts
        self._timeouts = Timeouts(limits.connect, limits.read, limits.write, limits.pool)
        self._client: UpstreamHttp | None = None

    # -- identity and lifecycle ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The upstream's configured name."""
        return self.spec.name

    def served_models(self) -> Sequence[ServedModel]:
        """The exact ids the upstream lists (its globs match more)."""
        return self._served

    def upstream_model(self, public_id: str) -> str | None:
        """The id the upstream knows ``public_id`` by (after ``rename``), or None."""
        served = public_id in self._exact or any(
            fnmatch.fnmatchcase(public_id, glob) for glob in self._globs
        )
        return self.spec.rename.get(public_id, public_id) if served else None

    async def start(self) -> None:
        """Open the connection pool."""
        if self._client is not None:
            return
        headers = {"User-Agent": "kakehashi"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = open_client(
            self.base_url,
            headers,
            max_connections=self.spec.max_concurrency,
            http2=self.spec.http2,
        )

    async def stop(self) -> None:
        """Close the pool (in-flight requests fail)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> UpstreamHttp:
        """The pool; 503 before :meth:`start`."""
        if self._client is None:
            raise ServiceUnavailableError(f"The upstream `{self.name}` is not connected yet.")
        return self._client

    # -- requests ------------------------------------------------------------------------------

    def _body(
        self, capability: Capability, request: RequestModel, call: Call, *, stream: bool
    ) -> dict[str, Any]:
        """The JSON to send: the request as it came, for the upstream's model, less what the
        route drops; refuses what the provider cannot honour."""
        body = forwarded(request)
        body["model"] = call.model
        body.pop("stream", None)
        options = dict(body.pop("stream_options", None) or {})
        if stream:
            body["stream"] = True
            if self.preset.stream_usage:
                options["include_usage"] = True
            if options:
                body["stream_options"] = options
        drop = self.spec.drop_params
        for refusal in self.preset.unsupported(capability, body, call.model):
            if drop is True or (drop and refusal.param in drop):
                body.pop(refusal.param, None)
                call.dropped_params.append(refusal.param)
                continue
            raise InvalidRequestError(
                f"Unsupported parameter: '{refusal.param}' ({refusal.reason}). Leave it out, "
                f"or let the route drop it (drop_params of upstream `{self.name}`).",
                param=refusal.param,
                code="unsupported_parameter",
            )
        return body

    async def _post(self, capability: Capability, body: dict[str, Any], call: Call) -> Any:
        """POST ``body`` and return the decoded JSON of a successful answer."""
        try:
            async with self.client.post(
                _ENDPOINTS[capability], _encode(body), self._timeouts_for(call)
            ) as response:
                status, headers, content = response.status, response.headers, await response.read()
        except TransportFailure as failure:
            raise self._transport_error(failure) from failure
        if status >= 400:
            raise self.preset.error(status, headers, content, self.name)
        try:
            data = json.loads(content)
        except ValueError:
            raise BadGatewayError(
                f"The upstream `{self.name}` answered with a body that is not JSON.",
                upstream=self.name,
            ) from None
        hidden = self.preset.body_error(status, data)
        if hidden is not None:
            raise normalize(hidden, headers, self.name)
        return data

    def _timeouts_for(self, call: Call) -> Timeouts:
        """The upstream's timeouts, each wait cut to the time the call has left."""
        left = call.remaining()
        limits = self._timeouts
        if left is None:
            return limits
        left = max(left, 0.001)
        return Timeouts(
            connect=min(limits.connect, left),
            read=min(limits.read, left),
            write=limits.write,
            pool=min(limits.pool, left),
        )

    def _transport_error(self, failure: TransportFailure) -> BadGatewayError | GatewayTimeoutError:
        if failure.kind in ("connect_timeout", "read_timeout"):
            kind = "connect" if failure.kind == "connect_timeout" else "answer"
            return GatewayTimeoutError(
                f"The upstream `{self.name}` did not {kind} in time.", upstream=self.name
            )
        if failure.kind == "connect":
            return BadGatewayError(f"Cannot reach the upstream `{self.name}`.", upstream=self.name)
        return BadGatewayError(
            f"The connection to the upstream `{self.name}` failed: {failure.cause}.",
            upstream=self.name,
        )

    def _parse(self, shape: type[M], data: Any) -> M:
        try:
            return shape.model_validate(data)
        except ValidationError as exc:
            raise BadGatewayError(
                f"The upstream `{self.name}` answered with a malformed {shape.__name__}: "
                f"{exc.errors()[0]['msg']}.",
                upstream=self.name,
            ) from None

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        """A whole chat completion from the upstream."""
        body = self._body(Capability.CHAT, request, call, stream=False)
        response = self._parse(
            ChatCompletionResponse, await self._post(Capability.CHAT, body, call)
        )
        response.model = request.model
        _count(call, response.usage)
        return response

    async def completion(self, request: CompletionRequest, call: Call) -> CompletionResponse:
        """A whole legacy completion from the upstream."""
        body = self._body(Capability.COMPLETIONS, request, call, stream=False)
        data = await self._post(Capability.COMPLETIONS, body, call)
        response = self._parse(CompletionResponse, data)
        response.model = request.model
        _count(call, response.usage)
        return response

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> EmbeddingResponse:
        """Embeddings from the upstream."""
        body = self._body(Capability.EMBEDDINGS, request, call, stream=False)
        data = await self._post(Capability.EMBEDDINGS, body, call)
        response = self._parse(EmbeddingResponse, data)
        response.model = request.model
        call.prompt_tokens = response.usage.prompt_tokens
        return response

    async def stream_chat(self, request: ChatCompletionRequest, call: Call) -> ChatStream:
        """A chat completion streamed from the upstream."""
        body = self._body(Capability.CHAT, request, call, stream=True)
        async for item in self._stream(Capability.CHAT, body, call, ChatCompletionChunk):
            if isinstance(item, ChatCompletionChunk):
                item.model = request.model
            yield item

    async def stream_completion(self, request: CompletionRequest, call: Call) -> CompletionStream:
        """A legacy completion streamed from the upstream."""
        body = self._body(Capability.COMPLETIONS, request, call, stream=True)
        async for item in self._stream(Capability.COMPLETIONS, body, call, CompletionResponse):
            if isinstance(item, CompletionResponse):
                item.model = request.model
            yield item

    async def _stream(
        self,
        capability: Capability,
        body: dict[str, Any],
        call: Call,
        shape: type[C],
    ) -> AsyncGenerator[C | StreamUsage, None]:
        """The upstream's SSE frames as chunks, then the usage; closing this generator closes
        the connection, which cancels the upstream's work."""
        usage: Usage | None = None
        try:
            async with self.client.post(
                _ENDPOINTS[capability], _encode(body), self._timeouts_for(call)
            ) as response:
                await self._check_stream(response)
                done = False
                async for data in _sse_data(response.chunks()):
                    # Read on past [DONE] to the end of the body, so the connection is reused.
                    done = done or data == b"[DONE]"
                    if done:
                        continue
                    chunk = self._chunk(shape, data)
                    if chunk.usage is not None:
                        usage = chunk.usage
                        _count(call, usage)
                    if "usage" in chunk.model_fields_set:
                        chunk.usage = None
                        chunk.model_fields_set.discard("usage")
                    if chunk.choices:
                        if usage is None:
                            call.completion_tokens += 1
                        yield chunk
        except TransportFailure as failure:
            raise self._transport_error(failure) from failure
        if usage is None:
            usage = Usage.of(call.prompt_tokens or 0, call.completion_tokens)
        yield StreamUsage(usage)

    async def _check_stream(self, response: UpstreamResponse) -> None:
        """Raise the upstream's error unless ``response`` is an event stream."""
        if response.status >= 400:
            content = await _read(response)
            raise self.preset.error(response.status, response.headers, content, self.name)
        if "text/event-stream" not in response.headers.get("content-type", ""):
            content = await _read(response)
            problem = self.preset.body_error(200, _json_or_none(content))
            raise normalize(problem or read_problem(502, content), response.headers, self.name)

    def _chunk(self, shape: type[C], data: bytes) -> C:
        try:
            return shape.model_validate_json(data)
        except ValidationError:
            problem = _json_or_none(data)
            if isinstance(problem, dict) and "error" in problem:  # an error frame
                raise normalize(read_problem(500, data), {}, self.name) from None
            raise BadGatewayError(
                f"The upstream `{self.name}` sent a malformed stream chunk.", upstream=self.name
            ) from None


def _encode(body: dict[str, Any]) -> bytes:
    """``body`` as compact JSON (non-ASCII text as UTF-8, as the client sent it)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _read(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except TransportFailure:
        return b""


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _count(call: Call, usage: Any) -> None:
    """Note an upstream's reported usage on ``call``."""
    if usage is None:
        return
    call.prompt_tokens = usage.prompt_tokens
    call.completion_tokens = getattr(usage, "completion_tokens", 0)


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event in a body that arrives in ``chunks`` of any size
    (multi-line data joined by newlines; lines end with LF or CRLF)."""
    parts: list[bytes] = []
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            line = line.removesuffix(b"\r")
            if not line:
                if parts:
                    yield b"\n".join(parts)
                    parts = []
            elif line.startswith(b"data:"):
                parts.append(line[5:].removeprefix(b" "))
    if pending.startswith(b"data:"):
        parts.append(pending.removesuffix(b"\r")[5:].removeprefix(b" "))
    if parts:
        yield b"\n".join(parts)


def upstream_backends(
    specs: Sequence[UpstreamSpec], *, environ: Mapping[str, str] | None = None
) -> list[UpstreamBackend]:
    """One backend per ``[[upstreams]]`` entry."""
    return [UpstreamBackend(spec, environ=environ) for spec in specs]


OPENAI_MODEL_GLOBS = (
    "gpt-*",
    "chatgpt-*",
    "o1*",
    "o3*",
    "o4*",
    "text-embedding-3-*",
    "davinci-002",
    "babbage-002",
)
"""OpenAI's model ids, routed to OpenAI when ``OPENAI_API_KEY`` is set and nothing else is
configured for OpenAI."""


def configured_upstreams(
    specs: Sequence[UpstreamSpec], *, passthrough: bool, environ: Mapping[str, str] | None = None
) -> list[UpstreamSpec]:
    """The ``[[upstreams]]``, plus OpenAI for its own model ids when ``OPENAI_API_KEY`` is set,
    ``passthrough`` allows it and no upstream is already OpenAI (local models and configured
    ids still come first: a glob only routes ids the catalog does not have)."""
    env = os.environ if environ is None else environ
    found = list(specs)
    configured = any(s.provider == "openai" or s.name == "openai" for s in found)
    if passthrough and env.get("OPENAI_API_KEY") and not configured:
        found.append(UpstreamSpec(name="openai", provider="openai", models=OPENAI_MODEL_GLOBS))
    return found
