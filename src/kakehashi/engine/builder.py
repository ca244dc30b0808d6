"""Build a ready-to-start :class:`AsyncEngine` from a Hugging Face style model directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.models.loader import load_model, read_model_config
from kakehashi.engine.tokenizer import Tokenizer

DEFAULT_MAX_MODEL_LEN = 8192

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_async_engine(
    model_dir: Path,
    *,
    max_model_len: int | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    max_num_seqs: int = 64,
) -> AsyncEngine:
    """Load the model and tokenizer in ``model_dir`` and wrap them in an (unstarted) engine.

    ``dtype="auto"`` keeps the checkpoint's dtype. ``max_model_len`` defaults to the model's
    maximum positions, capped at 8192. Torch uses ``threads`` threads, or every available core.
    The KV cache holds ``max_num_seqs`` full-length sequences, capped at 2 GiB (at least one).
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
    model = load_model(model_dir, dtype=None if dtype == "auto" else _DTYPES[dtype])
    tokenizer = Tokenizer.from_dir(model_dir)
    # No explicit KV size: EngineConfig's default holds max_num_seqs full-length sequences,
    # capped at DEFAULT_KV_CACHE_BYTES (2 GiB) and never below one full-length sequence.
    engine_config = EngineConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    return AsyncEngine(LLMEngine(model, tokenizer, engine_config))
