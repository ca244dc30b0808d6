"""Scheduler: admission, chunked prefill, token budget, sequence cap, preemption."""

from __future__ import annotations

from kakehashi.engine.block_manager import BlockManager
from kakehashi.engine.params import SamplingParams
from kakehashi.engine.scheduler import Scheduler, SchedulerOutput
from kakehashi.engine.sequence import Sequence, SequenceStatus

BS = 4


def make_scheduler(num_blocks=64, max_num_seqs=8, budget=64) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, BS), max_num_seqs=max_num_seqs, max_num_batched_tokens=budget
    )


def add(sched: Scheduler, name: str, n: int, first: int | None = None) -> Sequence:
    """Queue a request of ``n`` tokens; different names get different prompts."""
    base = ord(name[0]) * 100 if first is None else first
    seq = Sequence(name, [base + i for i in range(n)], SamplingParams())
    sched.add(seq)
    return seq


def run_step(sched: Scheduler, new_token: int = 7) -> SchedulerOutput:
    """Schedule, then apply what the engine would: computed counts and one sampled token."""
    out = sched.schedule()
    for s in out.scheduled:
        s.seq.num_computed_tokens = s.end
        sched.block_manager.cache_computed_blocks(s.seq)
        if s.samples:
            s.seq.append_token(new_token)
    return out


def plan(out: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(s.seq.request_id, s.start, s.num_tokens) for s in out.scheduled]


def test_prefill_then_decode():
    sched = make_scheduler()
    a = add(sched, "a", 10)
    out = run_step(sched)
    assert plan(out) == [("a", 0, 10)]
    assert out.scheduled[0].samples
    assert a.status is SequenceStatus.RUNNING
    assert plan(run_step(sched)) == [("a", 10, 1)]
    assert plan(run_step(sched)) == [("a", 11, 1)]


def test_decodes_go_first_then_new_prefills():
    sched = make_scheduler()
    add(sched, "a", 5)
    run_step(sched)
    add(sched, "b", 6)
    assert plan(run_step(sched)) == [("a", 5, 1), ("b", 0, 6)]


def test_chunked_prefill_under_token_budget():
    sched = make_scheduler(budget=8)
    add(sched, "a", 3)
    run_step(sched)
    long = add(sched, "b", 20)
    out = run_step(sched)
    assert plan(out) == [("a", 3, 1), ("b", 0, 7)]
    assert not out.scheduled[1].samples
    assert plan(run_step(sched)) == [("a", 4, 1), ("b", 7, 7)]
    out = run_step(sched)
    assert plan(out) == [("a", 5, 1), ("b", 14, 6)]
    assert out.scheduled[1].samples
    assert long.num_output_tokens == 1
    assert all(s.num_tokens <= 8 for s in out.scheduled)


def test_a_short_prompt_tail_joins_the_chunk_before_it_instead_of_a_step_of_its_own():
    sched = make_scheduler(budget=16)  # a tail of up to 16 // 4 = 4 tokens joins
    add(sched, "a", 20)
    out = run_step(sched)
    assert plan(out) == [("a", 0, 20)]  # 16 + a 4-token tail, one step
    assert out.scheduled[0].samples
    add(sched, "b", 21)
    assert plan(run_step(sched)) == [("a", 20, 1), ("b", 0, 15)]  # 6 past the budget: chunked
    assert plan(run_step(sched)) == [("a", 21, 1), ("b", 15, 6)]
    # The rule holds with the budget partly spent: 1 decode + 19 = 20 <= 1.25 x 16.
    add(sched, "c", 19)
    assert plan(run_step(sched)) == [("a", 22, 1), ("b", 21, 1), ("c", 0, 14)]
    assert sched.chunk_size(3, 0) == 3 and sched.chunk_size(5, 0) == 0


def test_budget_limits_admissions_in_arrival_order():
    sched = make_scheduler(budget=10)
    for name in "abc":
        add(sched, name, 4 if name != "c" else 6)
    assert plan(run_step(sched)) == [("a", 0, 4), ("b", 0, 4), ("c", 0, 2)]
    assert plan(run_step(sched)) == [("a", 4, 1), ("b", 4, 1), ("c", 2, 4)]


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_num_seqs=2)
    for name in "abc":
        add(sched, name, 3)
    assert [s[0] for s in plan(run_step(sched))] == ["a", "b"]
    assert [s.request_id for s in sched.waiting] == ["c"]
    sched.finish(sched.running[0])
    assert [s[0] for s in plan(run_step(sched))] == ["b", "c"]


def test_admission_waits_for_free_blocks():
    sched = make_scheduler(num_blocks=4)
    add(sched, "a", 12)  # 3 blocks
    add(sched, "b", 8)  # 2 blocks: does not fit yet
    assert [s[0] for s in plan(run_step(sched))] == ["a"]
    assert [s.request_id for s in sched.waiting] == ["b"]
    sched.finish(sched.running[0])
    assert plan(run_step(sched)) == [("b", 0, 8)]


def test_preemption_by_recompute_when_decode_needs_a_block():
    sched = make_scheduler(num_blocks=4)
    a = add(sched, "a", 8)  # exactly 2 blocks
    b = add(sched, "b", 8)
    run_step(sched)  # both prefilled; each sampled a 9th token, which needs a 3rd block
    assert sched.block_manager.num_free_blocks == 0
    out = run_step(sched)
    # a (older) gets b's blocks; b is preempted back to the front of the queue.
    assert out.preempted == [b]
    assert plan(out) == [("a", 8, 1)]
    assert b.status is SequenceStatus.WAITING
    assert b.block_table == [] and b.num_computed_tokens == 0
    assert list(sched.waiting) == [b]
    assert b.num_preemptions == 1
    sched.finish(a)
    out = run_step(sched)
    # Recompute: b's whole prompt plus its sampled token, minus any cached prefix blocks.
    assert out.scheduled[0].seq is b
    assert out.scheduled[0].end == 9
    assert out.scheduled[0].samples


def test_abort_removes_waiting_and_running_sequences():
    sched = make_scheduler()
    add(sched, "a", 5)
    run_step(sched)
    add(sched, "b", 5)
    free_before = sched.block_manager.num_free_blocks
    assert sched.abort("a").request_id == "a"
    assert sched.block_manager.num_free_blocks == free_before + 2
    assert sched.abort("b").status is SequenceStatus.FINISHED
    assert sched.abort("nope") is None
    assert not sched.has_unfinished()


def test_prefix_cache_hit_skips_computed_tokens():
    sched = make_scheduler()
    a = add(sched, "a", 10)
    run_step(sched)
    sched.finish(a)
    b = add(sched, "b", 10, first=ord("a") * 100)  # same prompt as a
    out = run_step(sched)
    assert plan(out) == [("b", 8, 2)]
    assert b.num_cached_tokens == 8


def test_same_prompt_waits_for_the_blocks_being_computed_then_shares_them():
    sched = make_scheduler(budget=64)
    a = add(sched, "a", 10, first=300)
    b = add(sched, "b", 10, first=300)
    assert plan(run_step(sched)) == [("a", 0, 10)]  # b waits: its prefix is being computed
    assert b.status is SequenceStatus.WAITING
    # Next step a decodes and b is admitted with a's two full blocks as cache hits.
    assert plan(run_step(sched)) == [("a", 10, 1), ("b", 8, 2)]
    assert b.block_table[:2] == a.block_table[:2]


def add_batch(sched: Scheduler, name: str, n: int) -> Sequence:
    """Queue a batch line (priority 1) of ``n`` tokens."""
    base = ord(name[0]) * 100
    seq = Sequence(name, [base + i for i in range(n)], SamplingParams(), priority=1)
    sched.add(seq)
    return seq


def test_interactive_requests_queue_ahead_of_batch_lines():
    sched = make_scheduler(max_num_seqs=1)
    add(sched, "a", 3)
    run_step(sched)
    add_batch(sched, "x", 3)
    add_batch(sched, "y", 3)
    add(sched, "b", 3)
    assert [s.request_id for s in sched.waiting] == ["b", "x", "y"]


def test_an_interactive_request_takes_a_batch_lines_slot_at_once():
    sched = make_scheduler(max_num_seqs=2)
    add_batch(sched, "x", 4)
    y = add_batch(sched, "y", 4)
    run_step(sched)
    add(sched, "a", 4)
    out = run_step(sched)
    # The newest batch line gives up its slot; the interactive request is prefilled now.
    assert out.preempted == [y]
    assert plan(out) == [("a", 0, 4), ("x", 4, 1)]
    assert [s.request_id for s in sched.waiting] == ["y"]
    assert y.num_computed_tokens == 0 and y.num_preemptions == 1


def test_an_interactive_request_takes_a_batch_lines_blocks():
    sched = make_scheduler(num_blocks=4)
    add_batch(sched, "x", 16)  # every block
    run_step(sched)
    add(sched, "a", 4)
    out = run_step(sched)
    assert [s.request_id for s in out.preempted] == ["x"]
    assert plan(out) == [("a", 0, 4)]


def test_interactive_work_is_budgeted_before_batch_prefills():
    sched = make_scheduler(budget=16)
    add_batch(sched, "x", 40)  # a long batch prompt, prefilled in chunks
    run_step(sched)
    add(sched, "a", 6)
    # The interactive prompt's step carries no batch prefill; after it, the batch prefill
    # goes on beside the interactive decode, in a quarter of the step.
    assert plan(run_step(sched)) == [("a", 0, 6)]
    assert plan(run_step(sched)) == [("a", 6, 1), ("x", 16, 4)]


def test_a_step_that_prefills_an_interactive_prompt_keeps_batch_decodes_only():
    sched = make_scheduler(budget=32)
    add_batch(sched, "x", 4)
    add_batch(sched, "y", 40)
    assert plan(run_step(sched)) == [("x", 0, 4), ("y", 0, 28)]
    add_batch(sched, "z", 4)
    add(sched, "a", 6)
    # x decodes; y's next chunk and z's admission wait for the next step.
    assert plan(run_step(sched)) == [("a", 0, 6), ("x", 4, 1)]
    assert [s.request_id for s in sched.waiting] == ["z"]
    assert plan(run_step(sched)) == [("a", 6, 1), ("x", 5, 1), ("y", 28, 8)]
    assert [s.request_id for s in sched.waiting] == ["z"]  # y took the batch's share


def test_batch_prefill_takes_a_quarter_of_a_step_while_interactive_requests_are_about():
    sched = make_scheduler(budget=16)  # 4 batch prefill tokens a step
    add(sched, "a", 2)
    for name in ("x", "y", "z"):
        add_batch(sched, name, 3)
    assert plan(run_step(sched)) == [("a", 0, 2)]
    assert plan(run_step(sched)) == [("a", 2, 1), ("x", 0, 3), ("y", 0, 1)]
    assert plan(run_step(sched)) == [("a", 3, 1), ("x", 3, 1), ("y", 1, 2), ("z", 0, 2)]
    # Without interactive traffic, batch prompts have the whole step.
    alone = make_scheduler(budget=16)
    for name in ("x", "y", "z"):
        add_batch(alone, name, 3)
    assert plan(run_step(alone)) == [("x", 0, 3), ("y", 0, 3), ("z", 0, 3)]


def test_batch_lines_never_preempt_each_other_for_admission():
    sched = make_scheduler(max_num_seqs=1)
    add_batch(sched, "x", 4)
    run_step(sched)
    add_batch(sched, "y", 4)
    out = run_step(sched)
    assert out.preempted == [] and plan(out) == [("x", 4, 1)]
