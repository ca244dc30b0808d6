"""Block manager: allocation, growth, freeing, prefix sharing, ref counts, eviction."""

from __future__ import annotations

import pytest

from kakehashi.engine.block_manager import BlockManager
from kakehashi.engine.params import SamplingParams
from kakehashi.engine.sequence import Sequence

BS = 4


def make_seq(tokens: list[int], name: str = "r", **params) -> Sequence:
    return Sequence(name, tokens, SamplingParams(**params))


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    """Pretend the model computed every token of ``seq``."""
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_computed_blocks(seq)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BS)
    seq = make_seq(list(range(10)))
    assert bm.can_allocate(seq)
    assert bm.allocate(seq) == 0
    assert len(seq.block_table) == 3
    assert len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert seq.block_table == []
    assert bm.num_free_blocks == 8


def test_cannot_allocate_beyond_pool():
    bm = BlockManager(2, BS)
    assert not bm.can_allocate(make_seq(list(range(9))))
    with pytest.raises(ValueError):
        bm.allocate(make_seq(list(range(9))))
    assert bm.can_allocate(make_seq(list(range(8))))


def test_append_slots_grows_only_at_block_boundaries():
    bm = BlockManager(4, BS)
    seq = make_seq([1, 2, 3, 4])
    bm.allocate(seq)
    assert len(seq.block_table) == 1
    bm.append_slots(seq, 4)
    assert len(seq.block_table) == 1
    bm.append_slots(seq, 5)
    assert len(seq.block_table) == 2
    assert bm.num_free_blocks == 2
    assert not bm.can_append(seq, 4 * BS + 1)


def test_shared_prefix_is_reused_with_ref_counts():
    bm = BlockManager(16, BS)
    prompt = list(range(100, 111))  # 11 tokens: two full blocks and a partial one
    a = make_seq(prompt, "a")
    bm.allocate(a)
    compute_all(bm, a)
    assert bm.num_cached_blocks == 2

    b = make_seq([*prompt[:8], 7, 7, 7], "b")
    assert bm.allocate(b) == 8
    assert b.num_computed_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]

    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 16
    # Freed but still cached: a third request finds the prefix again.
    c = make_seq([*prompt[:8], 1], "c")
    assert bm.allocate(c) == 8


def test_last_token_is_never_taken_from_cache():
    bm = BlockManager(8, BS)
    a = make_seq(list(range(8)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = make_seq(list(range(8)), "b")
    # Both blocks are cached, but the last token must be computed to get its logits.
    assert bm.allocate(b) == 4


def test_prefix_must_match_from_the_start():
    bm = BlockManager(8, BS)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    bm.allocate(a)
    compute_all(bm, a)
    # Same second block but a different first block: the hash chain differs.
    b = make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")
    assert bm.allocate(b) == 0


def test_partial_computation_registers_only_computed_full_blocks():
    bm = BlockManager(8, BS)
    a = make_seq(list(range(12)), "a")
    bm.allocate(a)
    a.num_computed_tokens = 6  # mid-prefill: one full block computed
    bm.cache_computed_blocks(a)
    assert bm.num_cached_blocks == 1
    b = make_seq(list(range(12)), "b")
    assert bm.allocate(b) == 4


def test_eviction_takes_plain_blocks_first_then_least_recently_freed():
    bm = BlockManager(4, BS)
    a = make_seq([1, 1, 1, 1, 9], "a")
    bm.allocate(a)
    compute_all(bm, a)
    bm.free(a)  # block 0 cached ([1,1,1,1]), block 1 plain
    b = make_seq([2, 2, 2, 2, 9], "b")
    bm.allocate(b)
    compute_all(bm, b)
    bm.free(b)
    assert bm.num_cached_blocks == 2
    # Needs 3 blocks: 2 plain ones plus the least recently freed cached one (a's prefix).
    c = make_seq([3] * 9, "c")
    bm.allocate(c)
    assert bm.num_cached_blocks == 1
    bm.free(c)
    assert bm.allocate(make_seq([2, 2, 2, 2, 5], "d")) == 4  # b's prefix survived
    assert bm.allocate(make_seq([1, 1, 1, 1, 5], "e")) == 0  # a's was evicted


def test_prompt_logprobs_requests_skip_the_cache():
    bm = BlockManager(8, BS)
    a = make_seq(list(range(9)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = make_seq(list(range(9)), "b", prompt_logprobs=1)
    assert bm.allocate(b) == 0


def test_disabled_prefix_caching_never_shares():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    a = make_seq(list(range(9)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    assert bm.num_cached_blocks == 0
    assert bm.allocate(make_seq(list(range(9)), "b")) == 0


def test_reset_prefix_cache_forgets_free_cached_blocks():
    bm = BlockManager(8, BS)
    a = make_seq(list(range(9)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    bm.free(a)
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 0
    assert bm.num_free_blocks == 8
    assert bm.allocate(make_seq(list(range(9)), "b")) == 0


def test_a_prefix_being_computed_is_reported_in_flight_until_cached_or_freed():
    bm = BlockManager(16, BS)
    first = make_seq(list(range(10)), "first")
    twin = make_seq(list(range(10)), "twin")
    other = make_seq(list(range(50, 60)), "other")
    bm.allocate(first)
    assert bm.prefix_in_flight(twin)
    assert not bm.prefix_in_flight(other)
    compute_all(bm, first)  # its full blocks are now cached: the twin gets them as hits
    assert not bm.prefix_in_flight(twin)
    assert bm.allocate(twin) == 8
    bm.free(twin)
    # A sequence freed before computing its blocks no longer holds anyone back.
    bm.reset_prefix_cache()
    bm.free(first)
    bm.reset_prefix_cache()
    bm.allocate(other)
    late = make_seq(list(range(50, 60)), "late")
    assert bm.prefix_in_flight(late)
    bm.free(other)
    assert not bm.prefix_in_flight(late)
