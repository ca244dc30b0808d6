"""Build a ready-to-start :class:`AsyncEngine` from a Hugging Face style model directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.engine import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_QUEUE_LEN,
    EngineConfig,
    LLMEngine,
)
from kakehashi.engine.models.loader import checkpoint_dtype, load_model, read_model_config
from kakehashi.engine.tokenizer import Tokenizer

DEFAULT_MAX_MODEL_LEN = 8192

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_dtype(model_dir: Path) -> torch.dtype:
    """The checkpoint's dtype, except that half precision runs as bfloat16 where the CPU has
    fast bfloat16 matmuls (AVX-512 BF16 / AMX) and as float32 where it does not."""
    dtype = checkpoint_dtype(model_dir)
    if dtype == torch.float32 or torch.cuda.is_available():
        return dtype
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def build_async_engine(
    model_dir: Path,
    *,
    max_model_len: int | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    max_num_seqs: int = 64,
    kv_cache_bytes: int | None = None,
    max_queue_len: int | None = DEFAULT_MAX_QUEUE_LEN,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    enable_prefix_caching: bool = True,
    prepack_weights: bool = True,
    cpu_kernels: bool = True,
) -> AsyncEngine:
    """Load the model and tokenizer in ``model_dir`` and wrap them in an (unstarted) engine.

    ``dtype="auto"`` keeps the checkpoint's dtype (half precision: see :func:`auto_dtype`).
    ``max_model_len`` defaults to the model's maximum positions, capped at 8192. Torch uses
    ``threads`` threads, or every available core.
    The KV cache takes ``kv_cache_bytes`` bytes if given; by default it holds ``max_num_seqs``
    full-length sequences, capped at 2 GiB and at 40 % of the available memory (and always at
    least one). At most ``max_queue_len`` requests wait for admission (None: unbounded);
    further ones raise :class:`~kakehashi.engine.engine.EngineOverloadedError` (503).
    ``max_num_batched_tokens`` is the per-step token budget (prefill chunk size).
    ``prepack_weights`` keeps oneDNN-blocked copies of bfloat16 weights for batched matmuls
    (about 1.3x faster batched decode, one more copy of the projection weights in memory).
    ``cpu_kernels`` uses :mod:`kakehashi.engine.kernels` for bfloat16 decode where they run.
    """
    model_dir = Path(model_dir)
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    torch.set_num_threads(threads or available_cores())
    config = read_model_config(model_dir)
    if max_model_len is None:
        max_model_len = min(config.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
    elif max_model_len > config.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's "
            f"{config.max_position_embeddings} positions"
        )
    model = load_model(
        model_dir, dtype=_DTYPES[dtype] if dtype != "auto" else auto_dtype(model_dir)
    )
    tokenizer = Tokenizer.from_dir(model_dir)
    engine_config = EngineConfig(
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_bytes=kv_cache_bytes,
        max_queue_len=max_queue_len,
        enable_prefix_caching=enable_prefix_caching,
        max_num_batched_tokens=max_num_batched_tokens,
        prepack_weights=prepack_weights,
        cpu_kernels=cpu_kernels,
    )
    return AsyncEngine(LLMEngine(model, tokenizer, engine_config))
