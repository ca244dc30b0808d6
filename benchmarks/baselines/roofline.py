"""The machine's limits, measured with torch: memory bandwidth and bf16 matmul throughput.

Decode at batch 1 reads every weight once per token, so it can go no faster than
``bandwidth / weight bytes``. A large batch is bound by arithmetic: about ``2 * params`` FLOPs
per token, so no faster than ``peak FLOP/s / (2 * params)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Roofline:
    """Measured limits of this machine with the benchmark's thread count."""

    read_gb_s: float  # streaming read: the faster of a large sum and a large bf16 mat-vec
    copy_gb_s: float  # bytes read + written by a large copy
    bf16_gflop_s: float  # best bf16 matmul

    def best_of(self, other: Roofline) -> Roofline:
        """Each limit at its better reading of two: a neighbour on a shared machine only ever
        slows a measurement down, so the best reading is the nearest to the machine's own."""
        return Roofline(
            max(self.read_gb_s, other.read_gb_s),
            max(self.copy_gb_s, other.copy_gb_s),
            max(self.bf16_gflop_s, other.bf16_gflop_s),
        )

    def compute_bound(self, matmul_params: int) -> float:
        """Compute-bound tokens/s (any batch large enough to saturate the matmuls)."""
        return self.bf16_gflop_s * 1e9 / (2 * matmul_params)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (page faults, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(threads: int, *, quick: bool = False) -> Roofline:
    """Measure bandwidth on a tensor far larger than the caches, and bf16 matmul peak."""
    torch.set_num_threads(threads)
    repeats = 3 if quick else 8
    nbytes = (256 if quick else 1024) * 2**20
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    read = nbytes / _best_seconds(src.sum, repeats)
    copy = 2 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats)
    src = dst = torch.empty(0)  # free the buffers
    # A bf16 matrix-vector product is how batch-1 decode reads its weights.
    cols = 4096
    matrix = torch.randn(nbytes // 2 // cols, cols).to(torch.bfloat16)
    vector = torch.randn(cols, dtype=torch.bfloat16)
    read = max(read, nbytes / _best_seconds(lambda: torch.mv(matrix, vector), repeats))
    matrix = torch.empty(0)

    best_flops = 0.0
    for n in (1024, 2048) if quick else (1024, 2048, 4096):
        a = torch.randn(n, n, dtype=torch.bfloat16)
        b = torch.randn(n, n, dtype=torch.bfloat16)
        seconds = _best_seconds(lambda a=a, b=b: torch.mm(a, b), repeats)
        best_flops = max(best_flops, 2 * n**3 / seconds)
    return Roofline(read / 1e9, copy / 1e9, best_flops / 1e9)


if __name__ == "__main__":
    print(measure(2))
