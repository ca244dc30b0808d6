"""Serve benchmark: the HTTP server under streaming load, a multi-turn chat, its peak RSS.

    python benchmarks/serve.py [--model smollm2-135m|qwen2.5-0.5b|all] [--quick]

Random bf16 weights in the real shapes of each model (``_shapes.py``). For each model the real
server (``kakehashi serve``, 2 threads, 4096-token window) runs as a subprocess and serves, over
127.0.0.1: 1, 8 and 32 concurrent streaming chat clients (distinct ~128-token prompts, 128
tokens each), then 10-turn chats that resend their whole history every turn. The baseline is
the engine itself, loaded in this process as the server loads it: each 1-client request is
rerun on it right after the server has answered it (never both at once); each many-client
phase alternates with the same prompts on the engine (as many concurrent callers, and its own
batch decode of that size), twice, and each reports its best round.
Every figure is printed next to its target (issues 3 and 15); raw results go to
``.cache/bench-results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from _serve_client import (
    ChatRequest,
    PhaseResult,
    StreamTiming,
    http_client,
    percentile,
    run_chat,
    run_load_phase,
    stream_chat,
)
from _serve_engine import (
    EngineRun,
    decode_batch,
    run_alone,
    run_clients,
    start_engine,
    summarize,
)
from _serve_prompts import LOGIT_BIAS, PromptMaker
from _serve_server import CpuMeter, ServerOptions, running_server
from _shapes import SHAPES, ModelShape, model_dir
from _steal import CpuTimes, report_line, stolen_share
from _workload import THREADS
from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.params import SamplingParams

RESULTS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench-results"
MAX_MODEL_LEN = 4096
CHAT_TTFT_RATIO_MAX = 1.5  # turn-10 TTFT / turn-1 TTFT
STREAM_RATIO_MIN = 0.9  # serve at 1 client / engine at batch 1, decode tok/s
LOAD_ROUNDS = 2  # each many-client phase, server then engine, this many times; best of each
LOAD_RATIO_MIN = 0.8  # serve at 32 clients, aggregate / engine at batch 32, decode tok/s


@dataclass(frozen=True, slots=True)
class ServeWorkload:
    """Sizes of one serve benchmark run."""

    prompt_tokens: int = 128  # whole chat prompt of a load-phase request, template included
    max_tokens: int = 128
    phases: tuple[tuple[int, int], ...] = ((1, 8), (8, 3), (32, 2))  # (clients, requests each)
    chat_turns: int = 10
    chat_user_tokens: int = 200
    chat_answer_tokens: int = 32
    chat_conversations: int = 3  # distinct chats; each turn's TTFT is the median over them

    @classmethod
    def quick(cls) -> ServeWorkload:
        return cls(
            max_tokens=32,
            phases=((1, 3), (8, 1), (32, 1)),
            chat_answer_tokens=16,
            chat_conversations=1,
        )


def build_requests(
    maker: PromptMaker, model: str, workload: ServeWorkload, seed: int
) -> dict[int, list[ChatRequest]]:
    """Distinct prompts for every load phase (so only the template's prefix is shared)."""
    rng = random.Random(seed)
    bias = maker.logit_bias()
    requests: dict[int, list[ChatRequest]] = {}
    for clients, each in workload.phases:
        requests[clients] = [
            ChatRequest(
                model,
                [
                    {
                        "role": "user",
                        "content": maker.user_text_for_prompt(rng, workload.prompt_tokens),
                    }
                ],
                workload.max_tokens,
                bias,
            )
            for _ in range(clients * each)
        ]
    return requests


def bench_model(shape: ModelShape, workload: ServeWorkload) -> dict[str, Any]:
    """Every serve figure of one model shape."""
    print(f"\n== {shape.name}: preparing weights", flush=True)
    directory = model_dir(shape)
    result: dict[str, Any] = {"model_dir": str(directory), "workload": asdict(workload)}
    result.update(asyncio.run(_session(directory, workload)))
    return result


async def _session(directory: Path, workload: ServeWorkload) -> dict[str, Any]:
    """Load the baseline engine, then start the server, run every phase, stop it."""
    maker = PromptMaker.for_model(directory)
    model = directory.name  # the server's default public id
    phases = build_requests(maker, model, workload, seed=11)
    warmup = build_requests(maker, model, ServeWorkload(phases=((1, 2),), max_tokens=8), seed=12)
    rng = random.Random(13)
    chats = [
        [maker.text(rng, workload.chat_user_tokens) for _ in range(workload.chat_turns)]
        for _ in range(workload.chat_conversations)
    ]
    params = SamplingParams(
        max_tokens=workload.max_tokens,
        temperature=0.0,
        logit_bias={maker.forced_token(): LOGIT_BIAS},
    )
    print("  loading the baseline engine in this process...", flush=True)
    engine = await start_engine(directory, max_model_len=MAX_MODEL_LEN, threads=THREADS)
    result: dict[str, Any] = {"phases": [], "engine_phases": [], "engine_batches": []}
    options = ServerOptions(directory, max_model_len=MAX_MODEL_LEN, threads=THREADS)
    try:
        await run_alone(engine, maker.prompt_ids(warmup[1][0].messages), params)
        with tempfile.TemporaryDirectory(prefix="kakehashi-serve-bench-") as tmp:
            print("  starting the server...", flush=True)
            start = time.perf_counter()
            with running_server(options, Path(tmp)) as server:
                result["server_start_seconds"] = time.perf_counter() - start
                await run_load_phase(server.base_url, warmup[1], clients=1)
                for clients, _ in workload.phases:
                    cpu = CpuMeter(server)
                    if clients == 1:
                        with cpu.measuring():
                            phase, runs = await _paired_phase(
                                server.base_url, engine, maker, phases[1], params
                            )
                        plain = replace(params, logit_bias={}, ignore_eos=True)
                        ids = [maker.prompt_ids(r.messages) for r in phases[1][:2]]
                        plain_runs = [await run_alone(engine, p, plain) for p in ids]
                        result["engine"] = summarize(runs, plain_runs)
                    else:
                        phase, callers, batch = await _load_rounds(
                            server.base_url, engine, maker, phases[clients], params, clients, cpu
                        )
                        result["engine_phases"].append(callers)
                        result["engine_batches"].append(batch)
                    print(f"  {clients} client(s): {phase.wall_seconds:.0f} s", flush=True)
                    _check_lengths(phase.requests, workload.max_tokens)
                    tokens = sum(r.completion_tokens for r in phase.requests)
                    result["phases"].append({**phase.summary(), **cpu.per_token(tokens)})
                start = time.perf_counter()
                bias = maker.logit_bias()
                answer = workload.chat_answer_tokens
                conversations = [
                    await run_chat(server.base_url, model, chat, answer, bias) for chat in chats
                ]
                print(f"  chats: {time.perf_counter() - start:.0f} s", flush=True)
                result["chat"] = _chat_turns(conversations)
                result["server_peak_rss_mb"] = server.peak_rss_mb()
    finally:
        await engine.shutdown()
    return result


def _chat_turns(conversations: list[list[StreamTiming]]) -> list[dict[str, Any]]:
    """Per turn: the first chat's prompt and cached tokens, the median TTFT over the chats."""
    return [
        {
            "turn": i + 1,
            "prompt_tokens": turns[0].prompt_tokens,
            "cached_tokens": turns[0].cached_tokens,
            "ttft_ms": 1000 * percentile([t.ttft for t in turns], 50),
            "ttft_ms_each": [round(1000 * t.ttft) for t in turns],
        }
        for i, turns in enumerate(zip(*conversations, strict=True))
    ]


async def _paired_phase(
    base_url: str,
    engine: AsyncEngine,
    maker: PromptMaker,
    requests: list[ChatRequest],
    params: SamplingParams,
) -> tuple[PhaseResult, list[EngineRun]]:
    """The 1-client phase, each request followed by the same request on the bare engine.

    Never at the same time (the idle server or engine does not compete for the cores), but
    paired in time, so that a drift in the machine's load hits both figures alike.
    """
    timings, runs = [], []
    async with http_client(base_url, 1) as client:
        for request in requests:
            timings.append(await stream_chat(client, request))
            runs.append(await run_alone(engine, maker.prompt_ids(request.messages), params))
    busy = sum(t.done - t.sent for t in timings)  # back to back, as one client sends them
    return PhaseResult(1, timings, busy), runs


async def _load_rounds(
    base_url: str,
    engine: AsyncEngine,
    maker: PromptMaker,
    requests: list[ChatRequest],
    params: SamplingParams,
    clients: int,
    cpu: CpuMeter,
    rounds: int = LOAD_ROUNDS,
) -> tuple[PhaseResult, dict[str, float], dict[str, float]]:
    """A many-client phase on the server, then on the bare engine (as many concurrent callers,
    then the first ``clients`` prompts as one batch), ``rounds`` times in turn; the best round
    of each (``cpu`` ends up holding the server's CPU time of its best round). Run in turn,
    never at once, so that a neighbour's busy minute hits each alike."""
    ids = [maker.prompt_ids(r.messages) for r in requests]
    best: PhaseResult | None = None
    best_cpu = (0.0, 0.0)
    callers, batches = [], []
    for _ in range(rounds):
        with cpu.measuring():
            phase = await run_load_phase(base_url, requests, clients)
        if best is None or phase.wall_seconds < best.wall_seconds:
            best, best_cpu = phase, cpu.used
        callers.append(await run_clients(engine, ids, params, clients))
        batches.append(await decode_batch(engine, ids[:clients], params))
    assert best is not None
    cpu.used = best_cpu
    return (
        best,
        max(callers, key=lambda c: c["aggregate_tok_s"]),
        max(batches, key=lambda b: b["decode_tok_s"]),
    )


def _check_lengths(requests: list[StreamTiming], max_tokens: int) -> None:
    """Each request must stream ``max_tokens`` one-character tokens, as usage counts them."""
    for r in requests:
        if not (len(r.text) == r.completion_tokens == max_tokens):
            print(
                f"  warning: a request streamed {len(r.text)} characters for "
                f"{r.completion_tokens} tokens (asked {max_tokens}); per-token figures are off",
                flush=True,
            )
            return


def prefill_flops(shape: ModelShape, prompt_tokens: int, cached_tokens: int) -> float:
    """Matmul FLOPs of prefilling the uncached tail of a prompt (LM head on one token only).

    Linear layers cost 2 FLOPs per weight per new token; attention 4 per head dimension per
    (new token, earlier token) pair, per layer (QK^T and PV), causal within the new tokens.
    """
    new = prompt_tokens - cached_tokens
    linear = 2 * (shape.matmul_params() - shape.vocab_size * shape.hidden_size) * new
    pairs = new * cached_tokens + new * (new + 1) / 2
    attention = 4 * shape.num_heads * shape.head_dim * shape.num_layers * pairs
    return linear + attention


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(shape: ModelShape, result: dict[str, Any]) -> None:
    """The tables of one model: load phases, chat turns, baseline, targets."""
    print(f"\n### {shape.name}: serve benchmark ({THREADS} threads, 127.0.0.1)\n")
    header = (
        "clients",
        "requests",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "req decode tok/s",
        "aggregate tok/s",
        "tokens/chunk",
        "loop CPU us/tok",
        "server CPU us/tok",
    )
    rows = [
        (
            f"{p['clients']}",
            f"{p['requests']}",
            f"{p['ttft_p50_ms']:.0f}",
            f"{p['ttft_p99_ms']:.0f}",
            f"{p['itl_p50_ms']:.1f}",
            f"{p['itl_p99_ms']:.1f}",
            f"{p['request_decode_tok_s']:.1f}",
            f"{p['aggregate_tok_s']:.1f}",
            f"{p.get('tokens_per_chunk', 1.0):.2f}",
            f"{p['loop_cpu_us_per_token']:.0f}",
            f"{p['server_cpu_us_per_token']:.0f}",
        )
        for p in result["phases"]
    ]
    _table(header, rows)
    first = result["phases"][0]
    print(
        f"(prompts ~{first['prompt_tokens_mean']:.0f} tokens, {result['workload']['max_tokens']}"
        " tokens each; 'req decode' = median per-request tokens/s after the first token;"
        " 'aggregate' = all completion tokens / phase wall time; CPU per token: the server's"
        " event-loop thread, and its whole process, over the phase)\n"
    )

    chat = result["chat"]
    _table(
        ("chat turn", "prompt tokens", "cached tokens", "TTFT ms (median)", "TTFT ms each chat"),
        [
            (
                f"{t['turn']}",
                f"{t['prompt_tokens']}",
                f"{t['cached_tokens']}",
                f"{t['ttft_ms']:.0f}",
                " ".join(str(v) for v in t["ttft_ms_each"]),
            )
            for t in chat
        ],
    )
    engine = result["engine"]
    print(
        "\nengine alone, batch 1 (in-process, same prompts and sampling, each run right after"
        f" the server's 1-client request): decode"
        f" {engine['decode_tok_s']:.1f} tok/s, TTFT {engine['ttft_p50_ms']:.0f} ms,"
        f" whole request {engine['request_tok_s']:.1f} tok/s;"
        f" plain greedy (no logit_bias) {engine['plain_greedy_decode_tok_s']:.1f} tok/s\n"
    )

    engine_rows = {e["clients"]: e for e in result["engine_phases"]}
    served_rows = {p["clients"]: p for p in result["phases"]}
    for clients, e in engine_rows.items():
        print(
            f"engine alone, {clients} concurrent callers (same prompts, right after the server's"
            f" {clients}-client phase): aggregate {e['aggregate_tok_s']:.1f} tok/s, per-request"
            f" decode {e['request_decode_tok_s']:.1f} tok/s"
        )
    for b in result["engine_batches"]:
        print(
            f"engine alone, batch {b['batch']} (all added at once, as benchmarks/engine.py does):"
            f" decode {b['decode_tok_s']:.1f} tok/s"
        )
    print()
    batch_ratios = {
        b["batch"]: served_rows[b["batch"]]["aggregate_tok_s"] / b["decode_tok_s"]
        for b in result["engine_batches"]
    }
    load_ratios = {
        c: served_rows[c]["aggregate_tok_s"] / e["aggregate_tok_s"] for c, e in engine_rows.items()
    }
    turn_ratio = chat[-1]["ttft_ms"] / chat[0]["ttft_ms"]
    flop_ratio = prefill_flops(shape, chat[-1]["prompt_tokens"], chat[-1]["cached_tokens"]) / (
        prefill_flops(shape, chat[0]["prompt_tokens"], chat[0]["cached_tokens"])
    )
    stream_ratio = first["request_decode_tok_s"] / engine["decode_tok_s"]
    e2e_ratio = first["aggregate_tok_s"] / engine["request_tok_s"]
    result["ratios"] = {
        "chat_ttft_last_over_first": turn_ratio,
        "chat_prefill_flops_last_over_first": flop_ratio,
        "serve1_over_engine_b1_decode": stream_ratio,
        "serve1_over_engine_b1_end_to_end": e2e_ratio,
        **{f"serve{c}_over_engine{c}_aggregate": r for c, r in load_ratios.items()},
        **{f"serve{c}_over_engine_b{c}_decode": r for c, r in batch_ratios.items()},
    }
    most = max(load_ratios, default=None)
    _table(
        ("figure", "value", "target", ""),
        [
            (
                f"chat turn-{len(chat)} TTFT / turn-1 TTFT (medians)",
                f"{turn_ratio:.2f}",
                f"<= {CHAT_TTFT_RATIO_MAX}",
                _met(turn_ratio <= CHAT_TTFT_RATIO_MAX),
            ),
            (
                "  same, in prefill FLOPs (compute-bound floor)",
                f"{flop_ratio:.2f}",
                "-",
                "info",
            ),
            (
                "serve 1 client / engine batch 1, decode tok/s",
                f"{stream_ratio:.2f}",
                f">= {STREAM_RATIO_MIN}",
                _met(stream_ratio >= STREAM_RATIO_MIN),
            ),
            ("serve 1 client / engine batch 1, whole request", f"{e2e_ratio:.2f}", "-", "info"),
            *(
                (
                    f"serve {c} clients / engine {c} callers, aggregate tok/s",
                    f"{r:.2f}",
                    "-",
                    "info",
                )
                for c, r in load_ratios.items()
            ),
            *(
                (
                    f"serve {c} clients aggregate / engine batch {c} decode",
                    f"{r:.2f}",
                    f">= {LOAD_RATIO_MIN}" if c == most else "-",
                    _met(r >= LOAD_RATIO_MIN) if c == most else "info",
                )
                for c, r in batch_ratios.items()
            ),
            ("server peak RSS (VmHWM), MiB", f"{result['server_peak_rss_mb']:.0f}", "-", "info"),
        ],
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        pairs = zip(cells, widths, strict=True)
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(pairs))

    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for row in rows:
        print(line(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="short run (< 2 min per model)")
    args = parser.parse_args()
    workload = ServeWorkload.quick() if args.quick else ServeWorkload()
    names = list(SHAPES) if args.model == "all" else [args.model]
    load = os.getloadavg()[0]
    print(f"kakehashi serve benchmark, workload: {json.dumps(asdict(workload))}")
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores; figures will suffer")
    report: dict[str, Any] = {"workload": asdict(workload), "load_average_at_start": load}
    for name in names:
        shape = SHAPES[name]
        before = CpuTimes.now()
        result = bench_model(shape, workload)
        result["cpu_time_stolen"] = stolen_share(before, CpuTimes.now())
        print_report(shape, result)
        print(report_line(result["cpu_time_stolen"]))
        report[name] = result

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"serve-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
