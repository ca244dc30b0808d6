"""The seam between a model family and the engine that runs it.

A model runs on a *packed* batch: the new tokens of every scheduled sequence laid end to end in
one flat dimension ``T``. Linear layers see ``(T, hidden)``; only attention needs to know where
one sequence ends and the next begins, and that knowledge lives in the engine's
:class:`AttentionContext`, which also owns the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class AttentionContext(Protocol):
    """Supplied by the engine for one forward pass."""

    def attend(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Store this step's keys/values for ``layer_index`` and attend causally.

        Shapes: ``q`` is (T, num_heads, head_dim); ``k`` and ``v`` are (T, num_kv_heads,
        head_dim), rotary embedding already applied. Returns (T, num_heads, head_dim).
        """
        ...


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Architecture hyper-parameters, read from a Hugging Face ``config.json``."""

    architecture: str  # e.g. "LlamaForCausalLM", "Qwen2ForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None


class CausalLM(Protocol):
    """What every model family implements (an ``nn.Module``)."""

    config: ModelConfig

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """input_ids, positions: (T,) int64 → hidden states (T, hidden_size)."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden_size) → logits (N, vocab_size) in float32."""
        ...
