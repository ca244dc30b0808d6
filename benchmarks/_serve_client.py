"""Streaming chat clients of the serve benchmark: timed SSE requests, load phases, a chat.

Plain ``httpx`` with a hand-rolled SSE reader, so that what is timed is the server and not a
client library: each ``data:`` event is stamped the moment its line arrives.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

REQUEST_TIMEOUT_S = 600.0  # one request; every wait in the benchmark is bounded


@dataclass(slots=True)
class StreamTiming:
    """One streamed chat completion: when it was sent and when each content chunk arrived."""

    sent: float
    token_times: list[float] = field(default_factory=list)  # one per content chunk
    chunk_chars: list[int] = field(default_factory=list)  # the length of each chunk's text
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    done: float = 0.0

    @property
    def ttft(self) -> float:
        """Seconds from sending the request to the first generated text."""
        return self.token_times[0] - self.sent

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content chunks (one per token, unless the server sent
        several tokens in one chunk because this client was behind)."""
        return [b - a for a, b in itertools.pairwise(self.token_times)]

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first chunk, as this client saw them arrive (one
        character per token: the benchmark pins every output token to one character)."""
        span = self.token_times[-1] - self.token_times[0]
        return (sum(self.chunk_chars) - self.chunk_chars[0]) / span if span > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the benchmark sends: messages plus the fixed generation settings."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    logit_bias: dict[str, float]

    def body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "logit_bias": self.logit_bias,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


async def stream_chat(client: httpx.AsyncClient, request: ChatRequest) -> StreamTiming:
    """Send one streaming chat completion and time every chunk until ``[DONE]``."""
    timing = StreamTiming(sent=time.perf_counter())
    pieces: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=request.body()) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {body[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.perf_counter()
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    timing.token_times.append(now)
                    timing.chunk_chars.append(len(content))
                    pieces.append(content)
            usage = event.get("usage")
            if usage:
                timing.prompt_tokens = usage["prompt_tokens"]
                timing.completion_tokens = usage["completion_tokens"]
                details = usage.get("prompt_tokens_details") or {}
                timing.cached_tokens = details.get("cached_tokens", 0)
    timing.done = time.perf_counter()
    timing.text = "".join(pieces)
    if not timing.token_times:
        raise RuntimeError("the stream carried no text")
    return timing


def http_client(base_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=limits
    )


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """Every request of one load phase and the phase's wall time."""

    clients: int
    requests: list[StreamTiming]
    wall_seconds: float

    def summary(self) -> dict[str, float]:
        """The phase's figures: latencies in ms, rates in tokens per second."""
        ttfts = [r.ttft for r in self.requests]
        itls = [gap for r in self.requests for gap in r.itls]
        completion = sum(r.completion_tokens for r in self.requests)
        return {
            "clients": self.clients,
            "requests": len(self.requests),
            "prompt_tokens_mean": sum(r.prompt_tokens for r in self.requests) / len(self.requests),
            "completion_tokens": completion,
            "ttft_p50_ms": 1000 * percentile(ttfts, 50),
            "ttft_p99_ms": 1000 * percentile(ttfts, 99),
            "itl_p50_ms": 1000 * percentile(itls, 50),
            "itl_p99_ms": 1000 * percentile(itls, 99),
            "request_decode_tok_s": percentile([r.decode_rate for r in self.requests], 50),
            "tokens_per_chunk": completion / sum(len(r.token_times) for r in self.requests),
            "aggregate_tok_s": completion / self.wall_seconds,
            "wall_seconds": self.wall_seconds,
        }


async def run_load_phase(
    base_url: str, prompts: Sequence[ChatRequest], clients: int
) -> PhaseResult:
    """``clients`` concurrent clients, each sending its share of ``prompts`` one after another."""
    shares = [list(prompts[i::clients]) for i in range(clients)]
    async with http_client(base_url, clients) as client:

        async def one_client(share: list[ChatRequest]) -> list[StreamTiming]:
            return [await stream_chat(client, request) for request in share]

        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(share) for share in shares))
        wall = time.perf_counter() - start
    return PhaseResult(clients, [r for share in results for r in share], wall)


async def run_chat(
    base_url: str, model: str, user_messages: Sequence[str], answer_tokens: int, bias: dict
) -> list[StreamTiming]:
    """One conversation: each turn resends the whole history plus a new user message."""
    history: list[dict[str, str]] = []
    turns = []
    async with http_client(base_url, 1) as client:
        for message in user_messages:
            history.append({"role": "user", "content": message})
            request = ChatRequest(model, list(history), answer_tokens, bias)
            timing = await stream_chat(client, request)
            history.append({"role": "assistant", "content": timing.text})
            turns.append(timing)
    return turns


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
