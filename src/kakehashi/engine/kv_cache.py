"""The paged KV cache, allocated once, and the attention context of one forward pass.

Per layer, keys and values live in ``(num_blocks, block_size, num_kv_heads, head_dim)`` tensors.
Viewed flat as ``(num_blocks * block_size, Hkv, D)``, token ``p`` of a sequence sits at slot
``block_table[p // block_size] * block_size + p % block_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KVCache:
    """Key and value tensors for every layer, sized once from the block pool."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(
        *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Memory one block takes across all layers, keys and values."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize

    def flat(self, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_index``'s keys and values as (num_slots, Hkv, D) views."""
        k, v = self.keys[layer_index], self.values[layer_index]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])


@dataclass(frozen=True, slots=True)
class SequenceSlice:
    """Where one sequence sits in a packed batch and in the cache.

    Its ``num_new`` query tokens are rows ``[query_start, query_start + num_new)`` of the
    batch and are the last ``num_new`` of its ``context_len`` tokens; ``block_ids`` are the
    cache blocks holding those ``context_len`` tokens, in order.
    """

    query_start: int
    num_new: int
    context_len: int
    block_ids: torch.Tensor


def token_slots(
    block_table: Sequence[int],
    start: int,
    end: int,
    block_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Cache slots (end - start,) of token positions ``[start, end)`` given ``block_table``."""
    first = start // block_size
    last = -(-end // block_size)
    blocks = torch.tensor(block_table[first:last], dtype=torch.long, device=device)
    slots = blocks[:, None] * block_size + torch.arange(block_size, device=device)
    offset = first * block_size
    return slots.flatten()[start - offset : end - offset]


class PagedAttentionContext:
    """The :class:`~kakehashi.engine.models.base.AttentionContext` for one step.

    ``attend`` writes the step's keys/values into their slots, then attends per sequence over
    its whole context, gathered block by block. Single-token (decode) sequences share one
    padded SDPA call.
    """

    def __init__(
        self, cache: KVCache, new_slots: torch.Tensor, sequences: Sequence[SequenceSlice]
    ) -> None:
        self.cache = cache
        self.new_slots = new_slots  # (T,) slot of each packed token
        self.sequences = list(sequences)
        device = new_slots.device
        self._prefills = [s for s in self.sequences if s.num_new > 1 or s.context_len == 1]
        decodes = [s for s in self.sequences if s.num_new == 1 and s.context_len > 1]
        self._decode_rows: torch.Tensor | None = None
        if decodes:
            max_blocks = max(len(s.block_ids) for s in decodes)
            blocks = torch.zeros((len(decodes), max_blocks), dtype=torch.long, device=device)
            for i, s in enumerate(decodes):
                blocks[i, : len(s.block_ids)] = s.block_ids
            lengths = torch.tensor([s.context_len for s in decodes], device=device)
            key_pos = torch.arange(max_blocks * cache.block_size, device=device)
            self._decode_rows = torch.tensor([s.query_start for s in decodes], device=device)
            self._decode_blocks = blocks  # (B, max_blocks), padded with block 0
            self._decode_mask = (key_pos[None, :] < lengths[:, None])[:, None, None, :]
            # _decode_mask: (B, 1, 1, max_blocks * block_size), True for real keys

    def attend(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        k_flat, v_flat = self.cache.flat(layer_index)
        k_flat.index_copy_(0, self.new_slots, k.to(k_flat.dtype))
        v_flat.index_copy_(0, self.new_slots, v.to(v_flat.dtype))
        k_cache, v_cache = self.cache.keys[layer_index], self.cache.values[layer_index]
        out = torch.empty_like(q)  # (T, Hq, D)
        for s in self._prefills:
            rows = slice(s.query_start, s.query_start + s.num_new)
            out[rows] = self._attend_one(s, q[rows], k_cache, v_cache)
        if self._decode_rows is not None:
            rows_t = self._decode_rows
            out[rows_t] = self._attend_decodes(q[rows_t], k_cache, v_cache)
        return out

    @staticmethod
    def _attend_one(
        s: SequenceSlice, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """q (n, Hq, D) against the sequence's context; caches (num_blocks, bs, Hkv, D)."""
        qs = q.transpose(0, 1)  # (Hq, n, D)
        L = s.context_len
        ks = k_cache.index_select(0, s.block_ids).flatten(0, 1)[:L].transpose(0, 1)
        vs = v_cache.index_select(0, s.block_ids).flatten(0, 1)[:L].transpose(0, 1)
        # ks, vs: (Hkv, L, D)
        if s.num_new == L:
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            # The queries are the last num_new positions: causal, aligned bottom-right.
            rows = torch.arange(s.num_new, device=q.device)[:, None] + (L - s.num_new)
            mask = torch.arange(L, device=q.device)[None, :] <= rows  # (n, L)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
        return o.transpose(0, 1)  # (n, Hq, D)

    def _attend_decodes(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """q (B, Hq, D): one new token per sequence, all attended in one padded call."""
        b = self._decode_blocks.shape[0]
        flat = self._decode_blocks.flatten()
        kd = k_cache.index_select(0, flat).view(b, -1, *k_cache.shape[2:]).transpose(1, 2)
        vd = v_cache.index_select(0, flat).view(b, -1, *v_cache.shape[2:]).transpose(1, 2)
        # kd, vd: (B, Hkv, max_blocks * block_size, D)
        o = F.scaled_dot_product_attention(
            q[:, :, None, :], kd, vd, attn_mask=self._decode_mask, enable_gqa=True
        )  # (B, Hq, 1, D)
        return o[:, :, 0, :]
