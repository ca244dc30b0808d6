"""Paged KV cache and attention context against a plain no-cache forward of the same model."""

from __future__ import annotations

import pytest
import torch
from reference_context import ReferenceContext

from kakehashi.engine.block_manager import BlockManager
from kakehashi.engine.kv_cache import KVCache, PagedAttentionContext, SequenceSlice, token_slots
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.params import SamplingParams
from kakehashi.engine.runner import ModelRunner
from kakehashi.engine.scheduler import Scheduler
from kakehashi.engine.sequence import Sequence

BS = 4


@pytest.fixture(scope="module")
def model(tiny_qwen2_dir):
    return load_model(tiny_qwen2_dir)


def make_cache(model, num_blocks: int = 64) -> KVCache:
    c = model.config
    return KVCache(
        num_layers=c.num_layers,
        num_blocks=num_blocks,
        block_size=BS,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        dtype=torch.float32,
    )


def full_forward_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits of every position from one plain forward over the whole sequence."""
    with torch.inference_mode():
        ids = torch.tensor(tokens)
        hidden = model.forward(ids, torch.arange(len(tokens)), ReferenceContext())
        return model.compute_logits(hidden).float()


def test_bytes_per_block():
    size = KVCache.bytes_per_block(
        num_layers=2, block_size=16, num_kv_heads=2, head_dim=8, dtype=torch.bfloat16
    )
    assert size == 2 * 2 * 16 * 2 * 8 * 2


def test_slots_follow_the_block_table():
    assert token_slots([5, 2, 7], 0, 7, 4).tolist() == [20, 21, 22, 23, 8, 9, 10]
    assert token_slots([5, 2, 7], 6, 10, 4).tolist() == [10, 11, 28, 29]


def test_attend_writes_kv_into_slots_in_place(model):
    cache = make_cache(model, num_blocks=4)
    hkv, d = model.config.num_kv_heads, model.config.head_dim
    hq = model.config.num_heads
    k = torch.randn(3, hkv, d)
    v = torch.randn(3, hkv, d)
    q = torch.randn(3, hq, d)
    # Three new tokens after one already cached at slot 8.
    keys_before = cache.keys[1]
    slots = torch.tensor([9, 10, 11])  # block 2, offsets 1..3 (block size 4)
    ctx = PagedAttentionContext(cache, slots, [SequenceSlice(0, 3, 4, torch.tensor([2]))])
    out = ctx.attend(1, q, k, v)
    assert out.shape == (3, hq, d)
    assert cache.keys[1] is keys_before
    flat_k, flat_v = cache.flat(1)
    assert torch.equal(flat_k[9:12], k)
    assert torch.equal(flat_v[9:12], v)
    assert cache.keys[0].abs().sum() == 0  # other layers untouched


def test_chunked_prefill_and_batched_decode_match_a_full_forward(model):
    """Run three sequences through scattered blocks, in chunks, and decode them together."""
    bm = BlockManager(64, BS, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=9)
    runner = ModelRunner(model, make_cache(model))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (13, 5, 2)]
    seqs = [Sequence(f"s{i}", p, SamplingParams()) for i, p in enumerate(prompts)]
    # Fragment the pool so block tables are not contiguous.
    filler = Sequence("filler", [1] * 9, SamplingParams())
    bm.allocate(filler)
    for seq in seqs:
        sched.add(seq)
    bm.free(filler)

    extra = {seq.request_id: [500 + 7 * i for i in range(4)] for seq in seqs}
    got: dict[str, list[torch.Tensor]] = {seq.request_id: [] for seq in seqs}
    for _ in range(12):
        if not sched.has_unfinished():
            break
        plan = sched.schedule()
        out = runner.run(plan.scheduled)
        for row, i in enumerate(out.sample_indices):
            s = plan.scheduled[i]
            got[s.seq.request_id].append(out.sample_logits[row])
        for s in plan.scheduled:
            s.seq.num_computed_tokens = s.end
            if s.samples:
                queue = extra[s.seq.request_id]
                if queue:
                    s.seq.append_token(queue.pop(0))
                else:
                    sched.finish(s.seq)
    for seq in seqs:
        want = full_forward_logits(model, seq.token_ids)[seq.num_prompt_tokens - 1 :]
        assert len(got[seq.request_id]) == len(want) == 5
        torch.testing.assert_close(torch.stack(got[seq.request_id]), want, atol=1e-4, rtol=1e-4)


def test_prompt_logits_are_returned_for_every_fed_position(model):
    bm = BlockManager(16, BS)
    sched = Scheduler(bm, max_num_batched_tokens=4)
    runner = ModelRunner(model, make_cache(model, 16))
    tokens = list(range(20, 30))
    seq = Sequence("p", tokens, SamplingParams(prompt_logprobs=2))
    sched.add(seq)
    rows = []
    while seq.num_computed_tokens < seq.num_tokens:
        plan = sched.schedule()
        out = runner.run(plan.scheduled)
        rows.append(out.prompt_logits[0])
        seq.num_computed_tokens = plan.scheduled[0].end
    torch.testing.assert_close(
        torch.cat(rows), full_forward_logits(model, tokens), atol=1e-4, rtol=1e-4
    )
