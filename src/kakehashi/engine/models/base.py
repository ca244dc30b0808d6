"""The seam between a model family and the engine that runs it.

A model runs on a *packed* batch: the new tokens of every scheduled sequence laid end to end in
one flat dimension ``T``. Linear layers see ``(T, hidden)``; only attention needs to know where
one sequence ends and the next begins, and that knowledge lives in the engine's
:class:`AttentionContext`, which also owns the KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from kakehashi.engine.kernels import Kernels


@dataclass(frozen=True, slots=True)
class PagedDecode:
    """A step in which every sequence feeds exactly one token, laid out for the fused decode
    kernels (:mod:`kakehashi.engine.kernels`): row ``b`` of the batch is sequence ``b``."""

    keys: Sequence[torch.Tensor]  # per layer, (num_blocks, block_size, Hkv, D)
    values: Sequence[torch.Tensor]
    slots: torch.Tensor  # (B,) int64: where each new token's key and value go
    block_tables: torch.Tensor  # (B, max_blocks) int32
    context_lens: torch.Tensor  # (B,) int32, the new token included


class AttentionContext(Protocol):
    """Supplied by the engine for one forward pass."""

    # Set when the step is decode-only and the cache runs on the CPU kernels: a model may then
    # run whole layers through ``kakehashi.decode_layer_`` instead of calling ``attend``.
    paged_decode: PagedDecode | None

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
        """hidden (N, hidden_size) → logits (N, vocab_size), in the model's dtype.

        Not widened to float32 here: greedy decoding takes the argmax of bfloat16 logits as
        they are, and the sampler widens only the rows that need it.
        """
        ...

    def use_kernels(self, kernels: Kernels, *, pack: bool) -> None:
        """Run on ``kernels`` from now on; with ``pack``, keep packed copies of the weights
        for multi-row matmuls where that pays. Called once by the runner, before any step."""
        ...
