"""Load a model's weights into its model class, from any :class:`Checkpoint`.

The functions that find and read checkpoints live beside this module (``sources``,
``hf_dir``, ``gguf_file``, ``checkpoint``); the common ones are re-exported here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from kakehashi.engine.models.checkpoint import Checkpoint, open_checkpoint
from kakehashi.engine.models.hf_dir import checkpoint_dtype, read_model_config
from kakehashi.engine.models.registry import model_family
from kakehashi.engine.models.sources import (
    HUB_ALLOW_PATTERNS,
    ModelSourceError,
    resolve_model_source,
)

__all__ = [
    "HUB_ALLOW_PATTERNS",
    "ModelSourceError",
    "checkpoint_dtype",
    "load_model",
    "read_model_config",
    "resolve_model_source",
]

log = logging.getLogger(__name__)


def load_model(
    source: Path | str | Checkpoint,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
) -> nn.Module:
    """Build the model for ``source`` (a checkpoint, or the path of one) and load its weights
    (eval mode, no grad).

    ``dtype=None`` keeps the checkpoint's own dtype (float32 if it names none; a quantized GGUF:
    the half type its weights came from).
    """
    checkpoint = open_checkpoint(source) if isinstance(source, str | Path) else source
    dtype = dtype or checkpoint.dtype
    model_class = model_family(checkpoint.config.architecture).model_class
    started = time.perf_counter()
    model = model_class.from_weights(
        checkpoint.config, checkpoint.tensors(dtype, device), dtype=dtype, device=device
    )
    log.info(
        "read the weights of %s into %s in %.1f s",
        checkpoint.name,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - started,
    )
    return model
