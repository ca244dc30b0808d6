"""The serve benchmark's baseline: the engine itself, in this process, one request at a time.

The engine is built and driven exactly as ``kakehashi serve`` does it (``build_async_engine``
with the same context window and threads, loaded off the event loop, stepped on the
:class:`AsyncEngine` thread) and is handed the very token ids and sampling settings the server
derives from the 1-client requests. The difference between the two is then HTTP, the API
layer and SSE. (Stepping the engine on the main thread instead can be several times slower on
a loaded machine: OpenMP's spin-waiting there behaves differently.)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _serve_client import REQUEST_TIMEOUT_S, percentile
from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.builder import build_async_engine
from kakehashi.engine.params import GenerationChunk, SamplingParams

_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One request run alone on the engine."""

    prompt_tokens: int
    completion_tokens: int
    ttft: float  # seconds from submitting the request to its first token
    decode_rate: float  # tokens per second after the first
    total_seconds: float


async def start_engine(model_dir: Path, *, max_model_len: int, threads: int) -> AsyncEngine:
    """Load the model as the server does (in a worker thread) and start the engine thread."""
    engine = await asyncio.to_thread(
        build_async_engine, model_dir, max_model_len=max_model_len, threads=threads
    )
    engine.start()
    return engine


async def run_alone(
    engine: AsyncEngine, prompt: Sequence[int], params: SamplingParams
) -> EngineRun:
    """Run one request on the engine, stamping each token as it reaches the event loop."""
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async for chunk in engine.generate(f"serve-bench-{next(_ids)}", prompt, params):
            if chunk.token_ids:
                stamps.append(time.perf_counter())
                tokens += len(chunk.token_ids)
    span = stamps[-1] - stamps[0]
    return EngineRun(
        prompt_tokens=len(prompt),
        completion_tokens=tokens,
        ttft=stamps[0] - start,
        decode_rate=(tokens - 1) / span if span > 0 else 0.0,
        total_seconds=stamps[-1] - start,
    )


async def run_clients(
    engine: AsyncEngine, prompts: Sequence[Sequence[int]], params: SamplingParams, clients: int
) -> dict[str, float]:
    """The serve benchmark's load phase on the bare engine: ``clients`` concurrent callers,
    each running its share of ``prompts`` one after another, as the HTTP clients do.

    Returns the aggregate rate (all completion tokens over the phase's wall time, prefill
    included, as the server's phase counts it) and the median per-request decode rate.
    """
    shares = [list(prompts[i::clients]) for i in range(clients)]

    async def one_client(share: list[Sequence[int]]) -> list[EngineRun]:
        return [await run_alone(engine, prompt, params) for prompt in share]

    start = time.perf_counter()
    results = await asyncio.gather(*(one_client(share) for share in shares))
    wall = time.perf_counter() - start
    runs = [r for share in results for r in share]
    return {
        "clients": clients,
        "requests": len(runs),
        "aggregate_tok_s": sum(r.completion_tokens for r in runs) / wall,
        "request_decode_tok_s": percentile([r.decode_rate for r in runs], 50),
        "wall_seconds": wall,
    }


async def decode_batch(
    engine: AsyncEngine, prompts: Sequence[Sequence[int]], params: SamplingParams
) -> dict[str, float]:
    """The engine's own batch decode: every prompt added at once, as ``benchmarks/engine.py``
    measures it, the tokens counted as the engine thread hands them over.

    Returns the decode rate: the tokens stamped after the last request's first token, over
    the time from then to the last token.
    """
    stamps: list[list[tuple[float, int]]] = [[] for _ in prompts]

    async def drain(i: int, generation: AsyncIterator[GenerationChunk]) -> None:
        async for chunk in generation:
            if chunk.token_ids:
                stamps[i].append((time.perf_counter(), len(chunk.token_ids)))

    start = time.perf_counter()
    generations = [
        engine.generate(f"serve-bench-{next(_ids)}", list(prompt), params) for prompt in prompts
    ]
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        await asyncio.gather(*(drain(i, g) for i, g in enumerate(generations)))
    first_done = max(s[0][0] for s in stamps)
    end = max(s[-1][0] for s in stamps)
    tokens = sum(n for s in stamps for t, n in s if t > first_done)
    return {
        "batch": len(prompts),
        "decode_tok_s": tokens / (end - first_done) if end > first_done else 0.0,
        "prefill_seconds": first_done - start,
    }


def summarize(runs: Sequence[EngineRun], plain_runs: Sequence[EngineRun]) -> dict[str, Any]:
    """Median batch-1 figures of ``runs`` (rates in tokens per second, TTFT in ms)."""
    return {
        "requests": len(runs),
        "ttft_p50_ms": 1000 * percentile([r.ttft for r in runs], 50),
        "decode_tok_s": percentile([r.decode_rate for r in runs], 50),
        "request_tok_s": percentile([r.completion_tokens / r.total_seconds for r in runs], 50),
        "plain_greedy_decode_tok_s": percentile([r.decode_rate for r in plain_runs], 50),
        "decode_tok_s_each": [round(r.decode_rate, 2) for r in runs],
    }
