"""Does ``torch.compile`` pay off on the engine's torch-kernel path? An A/B in one process.

    python benchmarks/torch_compile.py [--model smollm2-135m] [--dtype float32|bfloat16]
                                       [--reps 7]

The engine runs without kakehashi's CPU kernels (the path of CPUs without AVX-512 BF16, and
of float32 models), with and without ``torch.compile(dynamic=True)`` on the blocks inductor
can fuse: the SwiGLU MLP and the RMS norms (attention reads the paged cache through Python
and stays eager). Eager and compiled runs alternate, and the figures are the medians of the
paired ratios, so a noisy neighbour slows both sides of a pair alike.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from _kakehashi import run_batch
from _shapes import SHAPES, model_dir
from _workload import PREFILL_SEED, THREADS, WARMUP_SEED, prompts, tokenizer_size
from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.models import llama
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# (class, method) pairs swapped between their eager and compiled versions.
_TARGETS = ((llama.MLP, "forward"), (llama.RMSNorm, "forward"), (llama.RMSNorm, "add_and_norm"))


def _use(functions: dict[tuple[type, str], Callable[..., Any]]) -> None:
    for (cls, name), fn in functions.items():
        setattr(cls, name, fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(SHAPES), default="smollm2-135m")
    parser.add_argument("--dtype", choices=list(_DTYPES), default="float32")
    parser.add_argument("--reps", type=int, default=7, help="eager/compiled pairs per figure")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    path = model_dir(SHAPES[args.model])
    # Packed oneDNN weights are not something inductor can lower; the plain ones are.
    config = EngineConfig(
        max_model_len=2048, kv_cache_bytes=256 * 2**20, cpu_kernels=False, prepack_weights=False
    )
    engine = LLMEngine(
        load_model(path, dtype=_DTYPES[args.dtype]), Tokenizer.from_dir(path), config
    )
    vocab = tokenizer_size(path)
    eager = {(cls, name): getattr(cls, name) for cls, name in _TARGETS}
    compiled = {key: torch.compile(fn, dynamic=True) for key, fn in eager.items()}

    def figures(seed: int) -> dict[str, float]:
        b1 = run_batch(engine, prompts(seed, 1, 32, vocab), max_tokens=49)
        b8 = run_batch(engine, prompts(seed + 1, 8, 32, vocab), max_tokens=33)
        prefills = [
            run_batch(engine, [prompt], max_tokens=1).prefill_rate
            for prompt in prompts(PREFILL_SEED + seed, 3, 256, vocab)
        ]
        return {
            "decode batch 1 tok/s": b1.decode_rate,
            "decode batch 8 tok/s": b8.decode_rate,
            "prefill 256 tok/s": statistics.median(prefills),
        }

    start = time.perf_counter()
    for side in (compiled, eager):  # compile, and warm both sides
        _use(side)
        figures(WARMUP_SEED)
    warm_up = time.perf_counter() - start
    print(f"{args.model}, {args.dtype}: compiling and warming up took {warm_up:.0f} s")

    # Every run gets prompts of its own: a prompt seen before would come from the prefix cache.
    seeds = itertools.count(start=1000, step=10)
    runs: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
    for rep in range(args.reps):
        order = [("eager", eager), ("compiled", compiled)]
        for label, side in order if rep % 2 == 0 else order[::-1]:
            _use(side)
            runs[label].append(figures(next(seeds)))
    _use(eager)

    print(f"{'figure':<22}{'eager':>10}{'compiled':>10}  compiled/eager (median, range)")
    for key in runs["eager"][0]:
        e = [r[key] for r in runs["eager"]]
        c = [r[key] for r in runs["compiled"]]
        ratios = [ci / ei for ci, ei in zip(c, e, strict=True)]
        print(
            f"{key:<22}{statistics.median(e):>10.1f}{statistics.median(c):>10.1f}"
            f"  {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
