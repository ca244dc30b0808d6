"""Batch benchmark: a chat batch through the server against the engine's own offline
throughput, and interactive TTFT with and without a batch running.

    python benchmarks/batch.py [--lines 10000] [--quick]

Random bf16 weights in SmolLM2-135M's shapes (``_shapes.py``), served by the real server
(``kakehashi serve``, 2 threads) as a subprocess. In one run:

1. **Offline**: the engine alone, in this process, built as the server builds it, runs the
   batch's prompts (the server's own template and tokenizer), keeping as many requests in
   flight as the batch runner does. Lines per second is the baseline.
2. **Batch**: the same requests as a JSONL file, uploaded and run as a batch through the
   server (files, validation, the gateway, per-line commits with ledger rows). Lines per
   second from ``in_progress_at`` to ``completed_at``. Target: >= 0.9x the offline rate.
3. **TTFT**: 4 interactive streaming clients, each sending requests back to back, with no
   batch running, then with a large batch running. Target: p50 TTFT with the batch <= 1.25x
   without.

Replies are pinned to one token with ``logit_bias`` (see ``_serve_prompts.py``) so every line
does the same work.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def offline(model_path: Path, maker: PromptMaker, requests: list[ChatRequest]) -> float:
    """Lines per second of the engine alone, ``IN_FLIGHT`` requests at a time."""
    engine = await start_engine(model_path, max_model_len=MAX_MODEL_LEN, threads=THREADS)
    try:
        forced = maker.forced_token()
        params = SamplingParams(
            max_tokens=BATCH_MAX_TOKENS, temperature=0.0, logit_bias={forced: 100.0}
        )
        prompts = [maker.prompt_ids(r.messages) for r in requests]
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(n: int, prompt: list[int]) -> None:
            async with slots:
                async for _chunk in engine.generate(f"offline-{n}", prompt, params):
                    pass

        # Warm up (kernels, allocator), then time the whole set.
        await asyncio.gather(*(one(-n - 1, p) for n, p in enumerate(prompts[:16])))
        started = time.perf_counter()
        await asyncio.gather(*(one(n, p) for n, p in enumerate(prompts)))
        return len(prompts) / (time.perf_counter() - started)
    finally:
        await engine.stop()


async def run_batch(client: httpx.AsyncClient, content: bytes) -> dict[str, Any]:
    """Upload ``content``, run it as a batch, and wait until it is over."""
    upload = await client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", content)}
    )
    upload.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    created.raise_for_status()
    return created.json()


async def wait_batch(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.5)


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


async def main_async(lines: int, ttft_seconds: float) -> None:
    shape = SHAPES["smollm2-135m"]
    path = model_dir(shape)
    maker = PromptMaker.for_model(path)
    model = path.name
    requests = batch_requests(maker, model, lines)
    content = jsonl(requests)
    cpu = CpuTimes.now()
    print(f"model {shape.name} (random bf16 weights), {THREADS} threads, {lines} lines")
    print(
        f"  each line: {BATCH_PROMPT_TOKENS}-token prompt, {BATCH_MAX_TOKENS} tokens out; "
        f"{IN_FLIGHT} in flight"
    )

    offline_rate = await offline(path, maker, requests)
    print(f"offline engine:      {offline_rate:8.1f} lines/s")

    with tempfile.TemporaryDirectory(prefix="kakehashi-batch-bench-") as tmp:
        options = ServerOptions(path, max_model_len=MAX_MODEL_LEN, threads=THREADS)
        with running_server(options, Path(tmp)) as server:
            async with http_client(server.base_url, INTERACTIVE_CLIENTS + 4) as client:
                warm = await run_batch(client, jsonl(requests[:16]))
                await wait_batch(client, warm["id"])
                created = await run_batch(client, content)
                done = await wait_batch(client, created["id"])
                counts = done["request_counts"]
                span = done["completed_at"] - done["in_progress_at"]
                batch_rate = counts["completed"] / max(span, 1)
                print(
                    f"batch via server:    {batch_rate:8.1f} lines/s "
                    f"({counts['completed']}/{counts['total']} ok, {span} s in progress)"
                )
                ratio = batch_rate / offline_rate
                verdict = "ok" if ratio >= THROUGHPUT_MIN else "BELOW TARGET"
                print(f"  ratio {ratio:.2f}x (target >= {THROUGHPUT_MIN}x): {verdict}")

                alone = await interactive(client, maker, model, ttft_seconds, seed=1)
                big = await run_batch(client, jsonl(requests * 4))
                while (await client.get(f"/v1/batches/{big['id']}")).json()[
                    "status"
                ] != "in_progress":
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.0)
                busy = await interactive(client, maker, model, ttft_seconds, seed=2)
                still = (await client.get(f"/v1/batches/{big['id']}")).json()
                await client.post(f"/v1/batches/{big['id']}/cancel")
    p50_alone, p50_busy = percentile(alone, 50), percentile(busy, 50)
    print(
        f"interactive TTFT, {INTERACTIVE_CLIENTS} clients: p50 {p50_alone:.0f} ms alone "
        f"({len(alone)} requests), {p50_busy:.0f} ms with a batch running ({len(busy)} requests; "
        f"the batch ran {still['request_counts']['completed']} lines meanwhile)"
    )
    print(
        f"  p90 {percentile(alone, 90):.0f} ms alone, {percentile(busy, 90):.0f} ms with the batch"
    )
    ratio = p50_busy / p50_alone
    verdict = "ok" if ratio <= TTFT_RATIO_MAX else "ABOVE TARGET"
    print(f"  ratio {ratio:.2f}x (target <= {TTFT_RATIO_MAX}x): {verdict}")
    print(report_line(stolen_share(cpu, CpuTimes.now())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--ttft-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="1,000 lines, 15 s of TTFT each")
    args = parser.parse_args()
    lines, seconds = (1000, 15.0) if args.quick else (args.lines, args.ttft_seconds)
    asyncio.run(main_async(lines, seconds))


if __name__ == "__main__":
    main()
