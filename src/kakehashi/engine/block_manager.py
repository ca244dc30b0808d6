"""Paged KV block bookkeeping with prefix caching, in pure Python over token ids.

The KV cache is a fixed pool of ``num_blocks`` blocks of ``block_size`` token slots. A sequence
owns a *block table*: the ids of the blocks holding its tokens in order. Once a block is full
and its keys/values are computed, it is registered under a hash of (parent block's hash, its
token ids); a later sequence whose prompt starts with the same tokens reuses those blocks
instead of recomputing them. Blocks are reference-counted; a cached block whose count drops
to zero stays findable in an LRU list until its slot is needed for something else.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from kakehashi.engine.sequence import Sequence


def block_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """The prefix hash of a full block: it depends on every token before it, via the parent."""
    return hash((parent, token_ids))


@dataclass(slots=True)
class Block:
    """One KV block: its reference count and, once full and computed, its prefix hash."""

    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


class BlockManager:
    """Allocates, shares and frees KV blocks for sequences."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks with no reusable content are handed out first; free blocks that still
        # hold a cached prefix are evicted least recently freed first.
        self._free_plain: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[int, int] = {}
        # Prefix hashes of full blocks that running sequences are computing right now, with
        # how many sequences compute each: a request with the same prefix (the n choices of
        # one prompt) waits for them instead of computing the same blocks again.
        self._in_flight: dict[int, int] = {}

    # -- queries ---------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (including cached ones that would be evicted)."""
        return len(self._free_plain) + len(self._free_cached)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _match_prefix(self, seq: Sequence) -> tuple[list[Block], list[int]]:
        """Cached blocks that hold a prefix of ``seq`` (never its last token), with hashes."""
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            # Prompt logprobs need the logits of every prompt position, so compute them all.
            return [], []
        matched: list[Block] = []
        hashes: list[int] = []
        parent: int | None = None
        bs = self.block_size
        # At least one token must be left to compute: its logits choose the next token.
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = block_hash(parent, tokens)
            block_id = self._hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            matched.append(self.blocks[block_id])
            hashes.append(h)
            parent = h
        return matched, hashes

    def prefix_in_flight(self, seq: Sequence) -> bool:
        """Whether the first block of ``seq`` missing from the cache is being computed by a
        running sequence, so that waiting a step or two would turn it into a cache hit."""
        if not self._in_flight:
            return False
        matched, hashes = self._match_prefix(seq)
        i = len(matched)
        if seq.params.prompt_logprobs is not None or i >= (seq.num_tokens - 1) // self.block_size:
            return False
        bs = self.block_size
        tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        return block_hash(hashes[-1] if hashes else None, tokens) in self._in_flight

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether ``seq`` (waiting, holding no blocks) fits in the pool right now."""
        matched, _ = self._match_prefix(seq)
        in_use = sum(1 for b in matched if b.ref_count > 0)
        return self.blocks_needed(seq.num_tokens) - in_use <= self.num_free_blocks

    # -- state changes ---------------------------------------------------------------------

    def _take_free(self) -> Block:
        if self._free_plain:
            block = self.blocks[self._free_plain.popleft()]
        else:
            block_id, _ = self._free_cached.popitem(last=False)
            block = self.blocks[block_id]
            # Evict: the slot is about to be overwritten.
            if block.hash is not None and self._hash_to_block.get(block.hash) == block_id:
                del self._hash_to_block[block.hash]
            block.hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block

    def _acquire(self, block: Block) -> None:
        if block.ref_count == 0:
            del self._free_cached[block.block_id]
        block.ref_count += 1

    def allocate(self, seq: Sequence) -> int:
        """Give ``seq`` blocks for all its tokens, reusing cached prefix blocks.

        Sets ``seq.block_table``, ``seq.block_hashes`` and ``seq.num_computed_tokens``; returns
        the number of tokens found in the prefix cache. Call only when :meth:`can_allocate`.
        """
        if seq.block_table:
            raise ValueError(f"{seq.request_id} already holds blocks")
        if not self.can_allocate(seq):
            raise ValueError(f"not enough free KV blocks for {seq.request_id}")
        matched, hashes = self._match_prefix(seq)
        for block in matched:
            self._acquire(block)
        table = [b.block_id for b in matched]
        for _ in range(self.blocks_needed(seq.num_tokens) - len(table)):
            table.append(self._take_free().block_id)
        seq.block_table = table
        seq.block_hashes = hashes
        seq.num_computed_tokens = len(matched) * self.block_size
        self._mark_in_flight(seq)
        return seq.num_computed_tokens

    def _mark_in_flight(self, seq: Sequence) -> None:
        """Record the hashes of the full blocks ``seq`` is about to compute."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        pending: list[int] = []
        for i in range(len(seq.block_hashes), seq.num_tokens // bs):
            parent = block_hash(parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            pending.append(parent)
            self._in_flight[parent] = self._in_flight.get(parent, 0) + 1
        seq.in_flight_hashes = pending

    def _clear_in_flight(self, seq: Sequence, count: int | None = None) -> None:
        """Forget the first ``count`` (default all) of ``seq``'s in-flight hashes."""
        pending = seq.in_flight_hashes
        done = pending if count is None else pending[:count]
        for h in done:
            left = self._in_flight[h] - 1
            if left:
                self._in_flight[h] = left
            else:
                del self._in_flight[h]
        seq.in_flight_hashes = [] if count is None else pending[count:]

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether ``seq`` can grow to hold ``num_tokens`` tokens."""
        extra = self.blocks_needed(num_tokens) - len(seq.block_table)
        return extra <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_tokens: int) -> None:
        """Grow ``seq``'s block table to hold ``num_tokens`` tokens (see :meth:`can_append`)."""
        if not self.can_append(seq, num_tokens):
            raise ValueError(f"not enough free KV blocks for {seq.request_id}")
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            seq.block_table.append(self._take_free().block_id)

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register the hashes of ``seq``'s blocks that are now full and computed."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        first = len(seq.block_hashes)
        if seq.in_flight_hashes:
            self._clear_in_flight(seq, seq.num_computed_tokens // bs - first)
        for i in range(first, seq.num_computed_tokens // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = block_hash(parent, tokens)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h not in self._hash_to_block:
                # A duplicate computed concurrently by another sequence stays unregistered.
                block.hash = h
                block.token_ids = tokens
                self._hash_to_block[h] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks; cached ones stay reusable until evicted."""
        self._clear_in_flight(seq)
        # Tail blocks first, so the LRU evicts the end of a prefix before its start.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self._free_cached[block_id] = None
                else:
                    self._free_plain.append(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix that no sequence holds."""
        for block_id in list(self._free_cached):
            block = self.blocks[block_id]
            if block.hash is not None:
                self._hash_to_block.pop(block.hash, None)
            block.hash = None
            block.token_ids = ()
            self._free_plain.append(block_id)
        self._free_cached.clear()
