"""Plain, obviously-correct attention contexts for testing model code against transformers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class ReferenceContext:
    """One sequence: per-layer K/V grow by concatenation; causal SDPA with GQA repeated out."""

    paged_decode = None  # the fused decode path needs a paged cache

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def attend(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        # q: (T, Hq, D); k, v: (T, Hkv, D)
        if layer_index in self.keys:
            k = torch.cat((self.keys[layer_index], k))
            v = torch.cat((self.values[layer_index], v))
        self.keys[layer_index], self.values[layer_index] = k, v  # (L, Hkv, D)
        new, total = q.shape[0], k.shape[0]
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # (L, Hq, D)
        v = v.repeat_interleave(groups, dim=1)
        # Query i sits at absolute position total - new + i and sees keys 0..that position.
        query_pos = torch.arange(total - new, total)[:, None]
        mask = torch.arange(total)[None, :] <= query_pos  # (T, L)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
        )  # (Hq, T, D)
        return out.transpose(0, 1)  # (T, Hq, D)


class PackedReferenceContext:
    """Several sequences packed end to end; each keeps its own :class:`ReferenceContext`."""

    paged_decode = None

    def __init__(self, num_sequences: int) -> None:
        self.sequences = [ReferenceContext() for _ in range(num_sequences)]
        self.lengths: Sequence[int] = ()

    def set_lengths(self, lengths: Sequence[int]) -> None:
        """How many of this step's tokens belong to each sequence, in packing order."""
        self.lengths = list(lengths)

    def attend(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        parts = zip(
            self.sequences,
            q.split(self.lengths),
            k.split(self.lengths),
            v.split(self.lengths),
            strict=True,
        )
        return torch.cat([ctx.attend(layer_index, *qkv) for ctx, *qkv in parts])
