"""kakehashi's engine on the benchmark workload (run as a child process: ``-m _kakehashi``)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from _workload import (
    PREFILL_SEED,
    THREADS,
    WARMUP_SEED,
    Workload,
    decode_batches,
    median,
    parse_child_args,
    peak_rss_mb,
    prompts,
    tokenizer_size,
    write_result,
)
from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.params import SamplingParams
from kakehashi.engine.tokenizer import Tokenizer
from kakehashi.settings import Settings

_ids = itertools.count()

# The KV pool is sized for the workload (32 sequences of 161 tokens fit many times over), as
# llama.cpp's context is, so that peak RSS compares weights and runtime, not idle cache.
ENGINE_CONFIG = EngineConfig(max_model_len=2048, max_num_seqs=64, kv_cache_bytes=256 * 2**20)


@dataclass(frozen=True, slots=True)
class Timing:
    """One batch of requests run to completion."""

    prompt_tokens: int
    prefill_seconds: float  # until every request has its first token
    decode_tokens: int  # tokens produced after that
    decode_seconds: float

    @property
    def prefill_rate(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def decode_rate(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def run_batch(engine: LLMEngine, batch: list[list[int]], max_tokens: int) -> Timing:
    """Add every prompt at once, step until all finish; time the prefill and decode phases."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    for prompt in batch:
        engine.add_request(f"bench-{next(_ids)}", prompt, params)
    started: set[str] = set()
    first_done = 0.0
    decode_tokens = 0
    while engine.has_unfinished():
        chunks = engine.step()
        now = time.perf_counter()
        if first_done:
            decode_tokens += sum(len(c.token_ids) for c in chunks)
            continue
        started.update(c.request_id for c in chunks if c.token_ids)
        if len(started) == len(batch):
            first_done = now
    end = time.perf_counter()
    return Timing(
        prompt_tokens=sum(len(p) for p in batch),
        prefill_seconds=first_done - start,
        decode_tokens=decode_tokens,
        decode_seconds=end - first_done,
    )


def measure(model_dir: Path, workload: Workload) -> dict[str, Any]:
    """Every kakehashi figure of the workload on the checkpoint in ``model_dir``."""
    torch.set_num_threads(THREADS)
    load_start = time.perf_counter()
    model = load_model(model_dir, dtype=torch.bfloat16)
    tokenizer = Tokenizer.from_dir(model_dir)
    # KAKEHASHI_CPU_KERNELS=0 (the torch-only run) reaches the engine through the settings.
    config = replace(ENGINE_CONFIG, cpu_kernels=Settings().cpu_kernels)
    engine = LLMEngine(model, tokenizer, config)
    result: dict[str, Any] = {
        "load_seconds": time.perf_counter() - load_start,
        "rss_after_load_mb": peak_rss_mb(),
        "num_kv_blocks": engine.num_kv_blocks,
        "cpu_kernels": engine.kv_cache.cpu_kernels,
    }
    vocab = tokenizer_size(model_dir)
    run_batch(engine, prompts(WARMUP_SEED, 2, 64, vocab), max_tokens=4)  # warm-up

    prefill = [
        run_batch(engine, [p], max_tokens=1).prefill_rate
        for p in prompts(PREFILL_SEED, workload.prefill_repeats, workload.prefill_tokens, vocab)
    ]
    result["prefill_tok_s"] = median(prefill)
    for batch_size in workload.batch_sizes:
        runs = [
            run_batch(engine, batch, max_tokens=workload.decode_tokens + 1)
            for batch in decode_batches(workload, batch_size, vocab)
        ]
        result[f"decode_b{batch_size}_tok_s"] = max(t.decode_rate for t in runs)
        result[f"prefill_b{batch_size}_tok_s"] = max(t.prefill_rate for t in runs)
    if workload.profile:
        for batch_size in (1, max(workload.batch_sizes)):
            result[f"profile_b{batch_size}"] = profile_decode(engine, batch_size, vocab)
    result["rss_peak_mb"] = peak_rss_mb()
    return result


def profile_decode(engine: LLMEngine, batch_size: int, vocab: int, steps: int = 8) -> str:
    """Where the time of ``steps`` decode steps at ``batch_size`` goes, as a table of ops."""
    params = SamplingParams(max_tokens=steps + 4, temperature=0.0, ignore_eos=True)
    for prompt in prompts(WARMUP_SEED + batch_size, batch_size, 32, vocab):
        engine.add_request(f"profile-{next(_ids)}", prompt, params)
    engine.step()  # the prefill
    engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    while engine.has_unfinished():
        engine.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    model_dir, workload, out = parse_child_args(__doc__ or "")
    write_result(out, measure(model_dir, workload))


if __name__ == "__main__":
    main()
