"""Build a ready-to-start :class:`AsyncEngine` from a Hugging Face style model directory."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.config import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_QUEUE_LEN,
    EngineConfig,
)
from kakehashi.engine.engine import LLMEngine
from kakehashi.engine.kernels import resolve_kernels
from kakehashi.engine.models.checkpoint import Checkpoint, open_checkpoint
from kakehashi.engine.models.loader import load_model

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 8192

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device called ``name``: ``cpu``, ``cuda`` or ``cuda:N``; ``auto`` is the first
    CUDA GPU where torch sees one and the CPU elsewhere. Raises ValueError for a device this
    machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: torch sees {count} CUDA GPU(s), numbered from 0")
    return device


def runtime_dtype(checkpoint: torch.dtype, device_type: str, *, fast_bf16: bool) -> torch.dtype:
    """The dtype to run a ``checkpoint``-dtype model in on ``device_type`` ("cpu" or "cuda").

    float32 checkpoints stay float32. Half precision runs as bfloat16 where the device does
    bfloat16 fast (``fast_bf16``: AVX-512 BF16 / AMX on a CPU, Ampere or later on a GPU).
    Elsewhere a CPU runs it as float32 and a GPU as float16 (its native half type).
    """
    if checkpoint == torch.float32:
        return checkpoint
    if fast_bf16:
        return torch.bfloat16
    return torch.float16 if device_type == "cuda" else torch.float32


def auto_dtype(model: Path | Checkpoint, device: torch.device | None = None) -> torch.dtype:
    """:func:`runtime_dtype` of the checkpoint ``model`` (or at that path) on ``device``
    (default: CPU)."""
    checkpoint = open_checkpoint(model) if isinstance(model, str | Path) else model
    device = device or torch.device("cpu")
    if device.type == "cuda":
        fast_bf16 = torch.cuda.is_bf16_supported()
    else:
        fast_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return runtime_dtype(checkpoint.dtype, device.type, fast_bf16=fast_bf16)


def build_async_engine(
    model_dir: Path | Checkpoint,
    *,
    max_model_len: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    max_num_seqs: int = 64,
    kv_cache_bytes: int | None = None,
    max_queue_len: int | None = DEFAULT_MAX_QUEUE_LEN,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    enable_prefix_caching: bool = True,
    prepack_weights: bool = True,
    cpu_kernels: bool = True,
) -> AsyncEngine:
    """Load the model and tokenizer of ``model_dir`` (a Hugging Face directory or a GGUF file,
    or a checkpoint already open) and wrap them in an (unstarted) engine.

    The model runs on ``device`` (see :func:`resolve_device`); ``dtype="auto"`` keeps the
    checkpoint's dtype (half precision: see :func:`runtime_dtype`).
    ``max_model_len`` defaults to the model's maximum positions, capped at 8192. Torch uses
    ``threads`` threads, or every available core.
    The KV cache takes ``kv_cache_bytes`` bytes if given; by default it holds ``max_num_seqs``
    full-length sequences, capped as :func:`~kakehashi.engine.memory.default_kv_cache_bytes`
    says for the device (and always at least one). At most ``max_queue_len`` requests wait
    for admission (None: unbounded); further ones raise
    :class:`~kakehashi.engine.engine.EngineOverloadedError` (503).
    ``max_num_batched_tokens`` is the per-step token budget (prefill chunk size).
    ``prepack_weights`` keeps oneDNN-blocked copies of bfloat16 weights for batched matmuls
    (about 1.3x faster batched decode, one more copy of the projection weights in memory).
    ``cpu_kernels`` uses :mod:`kakehashi.engine.kernels` for bfloat16 decode where they run.
    """
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    where = resolve_device(device)
    torch.set_num_threads(threads or available_cores())
    started = time.perf_counter()
    checkpoint = open_checkpoint(model_dir) if isinstance(model_dir, str | Path) else model_dir
    config = checkpoint.config
    if max_model_len is None:
        max_model_len = min(config.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
    elif max_model_len > config.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's "
            f"{config.max_position_embeddings} positions"
        )
    run_dtype = _DTYPES[dtype] if dtype != "auto" else auto_dtype(checkpoint, where)
    model = load_model(checkpoint, dtype=run_dtype, device=str(where))
    tokenizer = checkpoint.tokenizer()
    log.info(
        "model %s loaded on %s in %s in %.1f s",
        checkpoint.name,
        where,
        run_dtype,
        time.perf_counter() - started,
    )
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
    kernels = resolve_kernels(cpu_kernels, device=where, dtype=run_dtype)
    return AsyncEngine(LLMEngine(model, tokenizer, engine_config, kernels))
