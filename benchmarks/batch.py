"""Batch benchmark: a chat batch through the server against the engine's own offline
throughput, and interactive TTFT with and without a batch running.

    python benchmarks/batch.py [--lines 10000] [--quick]

Random bf16 weights in SmolLM2-135M's shapes (``_shapes.py``), served by the real server
(``kakehashi serve``, 2 threads) as a subprocess. In one run:

1. **Throughput**, in rounds that alternate the two sides (offline then batch, batch then
   offline, ...), each round on its own slice of the lines, so that a neighbour's load on this
   shared machine falls on both sides alike:

   - *offline*: the engine alone, in this process, built as the server builds it, runs the
     slice's prompts (the server's own template and tokenizer, tokenized before the clock
     starts), keeping as many requests in flight as the batch runner does;
   - *batch*: the same requests as a JSONL file, uploaded and run as a batch through the
     server (validation, the gateway, results committed with their ledger rows, the output
     file). Timed from ``POST /v1/batches`` until the client sees ``completed``.

   Target: batch lines per second >= 0.9x offline.
2. **TTFT**: 4 interactive streaming clients, each sending requests back to back, alone and
   with a batch running, in alternating cycles (a batch is created for each busy phase and
   cancelled after it). Target: p50 TTFT with the batch <= 1.25x without.

Replies are pinned to one token with ``logit_bias`` (see ``_serve_prompts.py``) so every line
does the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _serve_client import ChatRequest, http_client, percentile, stream_chat
from _serve_engine import start_engine
from _serve_prompts import PromptMaker
from _serve_server import ServerOptions, running_server
from _shapes import SHAPES, model_dir
from _steal import CpuTimes, report_line, stolen_share
from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.params import SamplingParams

MAX_MODEL_LEN = 2048
THREADS = 2
BATCH_PROMPT_TOKENS = 48
BATCH_MAX_TOKENS = 8
IN_FLIGHT = 128  # the server's default: twice max_num_seqs (64)
INTERACTIVE_CLIENTS = 4
INTERACTIVE_PROMPT_TOKENS = 96
INTERACTIVE_MAX_TOKENS = 16
THROUGHPUT_MIN = 0.9
TTFT_RATIO_MAX = 1.25


def batch_requests(maker: PromptMaker, model: str, lines: int) -> list[ChatRequest]:
    rng = random.Random(7)
    bias = maker.logit_bias()
    return [
        ChatRequest(
            model=model,
            messages=[
                {"role": "user", "content": maker.user_text_for_prompt(rng, BATCH_PROMPT_TOKENS)}
            ],
            max_tokens=BATCH_MAX_TOKENS,
            logit_bias=bias,
        )
        for _ in range(lines)
    ]


def jsonl(requests: list[ChatRequest]) -> bytes:
    out = []
    for n, request in enumerate(requests):
        body = request.body()
        body.pop("stream")
        body.pop("stream_options")
        line = {"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.append(json.dumps({**line, "body": body}))
    return ("\n".join(out) + "\n").encode()


async def offline(engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams) -> float:
    """Seconds the engine alone takes for ``prompts``, ``IN_FLIGHT`` requests at a time."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    ids = itertools.count()

    async def one(prompt: list[int]) -> None:
        async with slots:
            async for _chunk in engine.generate(f"offline-{next(ids)}", prompt, params):
                pass

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - started


async def wait_batch(
    client: httpx.AsyncClient, batch_id: str, every: float = 0.5
) -> dict[str, Any]:
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(every)


async def timed_batch(client: httpx.AsyncClient, content: bytes) -> tuple[float, dict[str, Any]]:
    """Seconds from creating a batch of ``content`` (uploaded first) until it is completed."""
    upload = await client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", content)}
    )
    upload.raise_for_status()
    started = time.perf_counter()
    created = await client.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    created.raise_for_status()
    done = await wait_batch(client, created.json()["id"], every=0.1)
    seconds = time.perf_counter() - started
    if done["status"] != "completed" or done["request_counts"]["failed"]:
        raise RuntimeError(f"the batch did not complete cleanly: {done}")
    return seconds, done


async def interactive(
    client: httpx.AsyncClient, maker: PromptMaker, model: str, seconds: float, seed: int
) -> list[float]:
    """TTFTs (ms) of ``INTERACTIVE_CLIENTS`` clients sending requests back to back."""
    rng = random.Random(seed)
    bias = maker.logit_bias()
    deadline = time.perf_counter() + seconds
    found: list[float] = []

    async def client_loop() -> None:
        while time.perf_counter() < deadline:
            text = maker.user_text_for_prompt(rng, INTERACTIVE_PROMPT_TOKENS)
            request = ChatRequest(
                model=model,
                messages=[{"role": "user", "content": text}],
                max_tokens=INTERACTIVE_MAX_TOKENS,
                logit_bias=bias,
            )
            timing = await stream_chat(client, request)
            found.append(1000 * timing.ttft)

    await asyncio.gather(*(client_loop() for _ in range(INTERACTIVE_CLIENTS)))
    return found


async def throughput(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    maker: PromptMaker,
    requests: list[ChatRequest],
    rounds: int,
) -> None:
    forced = maker.forced_token()
    params = SamplingParams(
        max_tokens=BATCH_MAX_TOKENS, temperature=0.0, logit_bias={forced: 100.0}
    )
    # Warm both sides up (kernels, allocator, the server's batch path).
    await offline(engine, [maker.prompt_ids(r.messages) for r in requests[:32]], params)
    await timed_batch(client, jsonl(requests[:32]))
    size = -(-len(requests) // rounds)
    totals = {"offline": 0.0, "batch": 0.0}
    in_progress = 0
    for n in range(rounds):
        part = requests[n * size : (n + 1) * size]
        prompts = [maker.prompt_ids(r.messages) for r in part]
        content = jsonl(part)
        seconds: dict[str, float] = {}
        for side in ("offline", "batch") if n % 2 == 0 else ("batch", "offline"):
            if side == "offline":
                seconds[side] = await offline(engine, prompts, params)
            else:
                seconds[side], done = await timed_batch(client, content)
                in_progress += done["completed_at"] - done["in_progress_at"]
        for side, value in seconds.items():
            totals[side] += value
        print(
            f"  round {n + 1}: {len(part)} lines, offline {len(part) / seconds['offline']:6.1f} "
            f"lines/s, batch {len(part) / seconds['batch']:6.1f} lines/s "
            f"({seconds['offline'] / seconds['batch']:.2f}x)"
        )
    lines = len(requests)
    offline_rate, batch_rate = lines / totals["offline"], lines / totals["batch"]
    print(f"offline engine:      {offline_rate:8.1f} lines/s ({totals['offline']:.0f} s)")
    print(
        f"batch via server:    {batch_rate:8.1f} lines/s ({totals['batch']:.0f} s from create "
        f"to completed; {in_progress} s of it in_progress, whole seconds)"
    )
    ratio = batch_rate / offline_rate
    verdict = "ok" if ratio >= THROUGHPUT_MIN else "BELOW TARGET"
    print(f"  ratio {ratio:.2f}x (target >= {THROUGHPUT_MIN}x): {verdict}")


async def ttft(
    client: httpx.AsyncClient,
    maker: PromptMaker,
    model: str,
    requests: list[ChatRequest],
    seconds: float,
    cycles: int,
) -> None:
    """Interactive TTFT alone and with a batch running, in ``cycles`` alternations of the two
    (``seconds`` of each in all), so that drift in a neighbour's load falls on both alike."""
    upload = await client.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("busy.jsonl", jsonl(requests))},
    )
    upload.raise_for_status()
    alone: list[float] = []
    busy: list[float] = []
    lines_run = 0
    for n in range(cycles):
        alone += await interactive(client, maker, model, seconds / cycles, seed=2 * n)
        created = await client.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        batch_id = created.json()["id"]
        while (await client.get(f"/v1/batches/{batch_id}")).json()["status"] != "in_progress":
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # past the batch's first steps, which prefill a full engine
        busy += await interactive(client, maker, model, seconds / cycles, seed=2 * n + 1)
        await client.post(f"/v1/batches/{batch_id}/cancel")
        done = await wait_batch(client, batch_id, every=0.2)
        lines_run += done["request_counts"]["completed"]
    p50_alone, p50_busy = percentile(alone, 50), percentile(busy, 50)
    print(
        f"interactive TTFT, {INTERACTIVE_CLIENTS} clients, {cycles} cycles: p50 {p50_alone:.0f} ms "
        f"alone ({len(alone)} requests), {p50_busy:.0f} ms with a batch running "
        f"({len(busy)} requests; the batches ran {lines_run} lines)"
    )
    print(
        f"  p90 {percentile(alone, 90):.0f} ms alone, {percentile(busy, 90):.0f} ms with the batch"
    )
    ratio = p50_busy / p50_alone
    verdict = "ok" if ratio <= TTFT_RATIO_MAX else "ABOVE TARGET"
    print(f"  ratio {ratio:.2f}x (target <= {TTFT_RATIO_MAX}x): {verdict}")


async def main_async(lines: int, rounds: int, ttft_seconds: float, ttft_cycles: int) -> None:
    shape = SHAPES["smollm2-135m"]
    path = model_dir(shape)
    maker = PromptMaker.for_model(path)
    model = path.name
    requests = batch_requests(maker, model, lines)
    cpu = CpuTimes.now()
    print(f"model {shape.name} (random bf16 weights), {THREADS} threads, {lines} lines")
    print(
        f"  each line: {BATCH_PROMPT_TOKENS}-token prompt, {BATCH_MAX_TOKENS} tokens out; "
        f"{IN_FLIGHT} in flight; {rounds} rounds"
    )
    engine = await start_engine(path, max_model_len=MAX_MODEL_LEN, threads=THREADS)
    try:
        with tempfile.TemporaryDirectory(prefix="kakehashi-batch-bench-") as tmp:
            options = ServerOptions(path, max_model_len=MAX_MODEL_LEN, threads=THREADS)
            with running_server(options, Path(tmp)) as server:
                async with http_client(server.base_url, INTERACTIVE_CLIENTS + 4) as client:
                    await throughput(client, engine, maker, requests, rounds)
                    await ttft(client, maker, model, requests[:5000], ttft_seconds, ttft_cycles)
    finally:
        await engine.shutdown()
    print(report_line(stolen_share(cpu, CpuTimes.now())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two sides")
    parser.add_argument(
        "--ttft-seconds", type=float, default=60.0, help="of each side, alone and busy"
    )
    parser.add_argument("--ttft-cycles", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1,000 lines, 20 s of TTFT each")
    args = parser.parse_args()
    lines, seconds = (1000, 20.0) if args.quick else (args.lines, args.ttft_seconds)
    asyncio.run(main_async(lines, args.rounds, seconds, args.ttft_cycles))


if __name__ == "__main__":
    main()
