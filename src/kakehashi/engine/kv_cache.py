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

from kakehashi.engine.models.base import PagedDecode


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
        cpu_kernels: bool = False,
        amx: bool = False,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Decode attention through kakehashi.engine.kernels (bfloat16 on the CPU only).
        self.cpu_kernels = cpu_kernels and dtype == torch.bfloat16 and _kernel_head_dim(head_dim)
        # Prompt attention through the AMX kernel (it takes head sizes 64, 128 and 256).
        self.prefill_kernel = self.cpu_kernels and amx and head_dim in (64, 128, 256)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._flat = [
            (k.view(-1, *shape[2:]), v.view(-1, *shape[2:]))
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    @staticmethod
    def bytes_per_block(
        *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Memory one block takes across all layers, keys and values."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize

    def flat(self, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_index``'s keys and values as (num_slots, Hkv, D) views."""
        return self._flat[layer_index]


def _kernel_head_dim(head_dim: int) -> bool:
    """Head sizes the decode-attention kernel handles: multiples of 16 up to 256."""
    return head_dim % 16 == 0 and head_dim <= 256


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
    its whole context. Everything that depends only on the batch layout (gather indices,
    masks, row ranges) is built once here and reused by every layer. A prompt fed from its
    first token attends to this step's keys directly, without a gather; single-token (decode)
    sequences share one padded SDPA call over their gathered blocks.
    """

    def __init__(
        self, cache: KVCache, new_slots: torch.Tensor, sequences: Sequence[SequenceSlice]
    ) -> None:
        self.cache = cache
        self.new_slots = new_slots  # (T,) slot of each packed token
        self.sequences = list(sequences)
        dtype = cache.keys[0].dtype if cache.keys else torch.float32
        self._prefills = [
            _PrefillPlan.of(s, dtype, kernel=cache.prefill_kernel)
            for s in self.sequences
            if _is_prefill(s)
        ]
        decodes = [s for s in self.sequences if not _is_prefill(s)]
        self._decodes: _DecodePlan | _KernelDecodePlan | None = None
        self.paged_decode: PagedDecode | None = None
        if decodes and cache.cpu_kernels:
            plan = _KernelDecodePlan.of(decodes)
            self._decodes = plan
            if not self._prefills and plan.rows == slice(0, len(self.sequences)):
                self.paged_decode = PagedDecode(
                    cache.keys, cache.values, new_slots, plan.block_tables, plan.context_lens
                )
        elif decodes:
            self._decodes = _DecodePlan.of(decodes, cache.block_size, dtype)

    def attend(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        k_cache, v_cache = self.cache.keys[layer_index], self.cache.values[layer_index]
        if k.dtype != k_cache.dtype:
            k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
        if self.cache.cpu_kernels:
            torch.ops.kakehashi.store_kv_(k_cache, v_cache, self.new_slots, k, v)
        else:
            k_flat, v_flat = self.cache.flat(layer_index)
            k_flat.index_copy_(0, self.new_slots, k)
            v_flat.index_copy_(0, self.new_slots, v)
        parts: list[tuple[slice | torch.Tensor, torch.Tensor]] = []
        for plan in self._prefills:
            rows = plan.rows
            parts.append((rows, plan.attend(q[rows], k[rows], v[rows], k_cache, v_cache)))
        if self._decodes is not None:
            rows = self._decodes.rows
            parts.append((rows, self._decodes.attend(q[rows], k_cache, v_cache)))
        if len(parts) == 1 and isinstance(parts[0][0], slice):
            rows, o = parts[0]
            if rows.start == 0 and rows.stop == q.shape[0]:
                return o
        out = torch.empty_like(q)  # (T, Hq, D)
        for rows, o in parts:
            out[rows] = o
        return out


def _is_prefill(s: SequenceSlice) -> bool:
    return s.num_new > 1 or s.context_len == 1


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, -inf elsewhere: built once per step rather than by SDPA per layer."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


@dataclass(frozen=True, slots=True)
class _PrefillPlan:
    """One sequence feeding several tokens: its rows, gather indices and causal mask."""

    rows: slice
    context_len: int
    block_ids: torch.Tensor | None  # None: the context is exactly this step's tokens
    mask: torch.Tensor | None  # (n, L) additive, when the queries do not start at position 0
    # The sequence's blocks (int32) when the AMX kernel attends in place of SDPA.
    kernel_table: torch.Tensor | None = None

    @classmethod
    def of(cls, s: SequenceSlice, dtype: torch.dtype, *, kernel: bool = False) -> _PrefillPlan:
        rows = slice(s.query_start, s.query_start + s.num_new)
        L = s.context_len
        if kernel:
            return cls(rows, L, None, None, s.block_ids.to(torch.int32))
        if s.num_new == L:
            return cls(rows, L, None, None)
        device = s.block_ids.device
        # The queries are the last num_new positions: causal, aligned bottom-right.
        query_pos = torch.arange(L - s.num_new, L, device=device)[:, None]
        allowed = torch.arange(L, device=device)[None, :] <= query_pos  # (n, L)
        return cls(rows, L, s.block_ids, _additive_mask(allowed, dtype))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """q (n, Hq, D) → (n, Hq, D); k, v are this step's (n, Hkv, D) for the same rows."""
        if self.kernel_table is not None:  # k and v are already in the cache
            return torch.ops.kakehashi.paged_prefill_attention(
                q, k_cache, v_cache, self.kernel_table, self.context_len, q.shape[-1] ** -0.5
            )
        if self.block_ids is not None:
            L = self.context_len
            k = k_cache.index_select(0, self.block_ids).flatten(0, 1)[:L]  # (L, Hkv, D)
            v = v_cache.index_select(0, self.block_ids).flatten(0, 1)[:L]
        # 4-D inputs: CPU SDPA takes its fused (flash) kernel only for batched 4-D tensors.
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=self.mask,
            is_causal=self.mask is None,
            enable_gqa=True,
        )  # (1, Hq, n, D)
        return o[0].transpose(0, 1)


@dataclass(frozen=True, slots=True)
class _DecodePlan:
    """Every single-token sequence of the step, attended together over padded contexts."""

    rows: slice | torch.Tensor
    num_seqs: int
    block_ids: torch.Tensor  # (B * max_blocks,) padded with block 0
    key_len: int  # keys per sequence after padding (or the exact length when B == 1)
    mask: torch.Tensor | None  # (B, 1, 1, key_len) additive: 0 for real keys, -inf for padding
    # (first, last + 1) when one sequence's blocks are consecutive: read them as a view
    block_span: tuple[int, int] | None = None

    @classmethod
    def of(cls, decodes: list[SequenceSlice], block_size: int, dtype: torch.dtype) -> _DecodePlan:
        device = decodes[0].block_ids.device
        rows = _decode_rows(decodes)
        if len(decodes) == 1:
            s = decodes[0]
            return cls(rows, 1, s.block_ids, s.context_len, None, _consecutive(s.block_ids))
        max_blocks = max(len(s.block_ids) for s in decodes)
        padded = [
            torch.nn.functional.pad(s.block_ids, (0, max_blocks - len(s.block_ids)))
            for s in decodes
        ]
        lengths = torch.tensor([s.context_len for s in decodes], device=device)
        key_pos = torch.arange(max_blocks * block_size, device=device)
        allowed = (key_pos[None, :] < lengths[:, None])[:, None, None, :]
        mask = _additive_mask(allowed, dtype)
        return cls(rows, len(decodes), torch.cat(padded), max_blocks * block_size, mask)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, D): one new token per sequence → (B, Hq, D)."""
        b, L = self.num_seqs, self.key_len
        if self.block_span is not None:
            k_cache, v_cache = k_cache[slice(*self.block_span)], v_cache[slice(*self.block_span)]
        else:
            k_cache = k_cache.index_select(0, self.block_ids)
            v_cache = v_cache.index_select(0, self.block_ids)
        kd = k_cache.view(b, -1, *k_cache.shape[2:])[:, :L]
        vd = v_cache.view(b, -1, *v_cache.shape[2:])[:, :L]
        # kd, vd: (B, L, Hkv, D) → (B, Hkv, L, D) for SDPA
        o = F.scaled_dot_product_attention(
            q[:, :, None, :],
            kd.transpose(1, 2),
            vd.transpose(1, 2),
            attn_mask=self.mask,
            enable_gqa=True,
        )  # (B, Hq, 1, D)
        return o[:, :, 0, :]


@dataclass(frozen=True, slots=True)
class _KernelDecodePlan:
    """Every single-token sequence of the step, for the paged decode-attention kernel.

    The kernel reads each sequence's keys and values in place through its block table: no
    gather, no padding, no mask.
    """

    rows: slice | torch.Tensor
    block_tables: torch.Tensor  # (B, max_blocks) int32, padded with block 0
    context_lens: torch.Tensor  # (B,) int32

    @classmethod
    def of(cls, decodes: list[SequenceSlice]) -> _KernelDecodePlan:
        device = decodes[0].block_ids.device
        tables = torch.nn.utils.rnn.pad_sequence(
            [s.block_ids for s in decodes], batch_first=True
        ).to(torch.int32)
        lengths = torch.tensor([s.context_len for s in decodes], dtype=torch.int32, device=device)
        return cls(_decode_rows(decodes), tables, lengths)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, D): one new token per sequence → (B, Hq, D)."""
        scale = q.shape[-1] ** -0.5
        return torch.ops.kakehashi.paged_decode_attention(
            q, k_cache, v_cache, self.block_tables, self.context_lens, scale
        )


def _decode_rows(decodes: list[SequenceSlice]) -> slice | torch.Tensor:
    """The packed rows of the decode sequences: a slice when they are adjacent."""
    starts = [s.query_start for s in decodes]
    if starts == list(range(starts[0], starts[0] + len(starts))):
        return slice(starts[0], starts[0] + len(starts))
    return torch.tensor(starts, dtype=torch.long, device=decodes[0].block_ids.device)


def _consecutive(block_ids: torch.Tensor) -> tuple[int, int] | None:
    """``(first, last + 1)`` if ``block_ids`` are consecutive ascending block numbers."""
    ids = block_ids.tolist()
    if ids and ids == list(range(ids[0], ids[0] + len(ids))):
        return ids[0], ids[0] + len(ids)
    return None
