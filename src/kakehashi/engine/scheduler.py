"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step, running sequences come first (one token each when decoding, the next chunk when
part-way through a prefill), then waiting sequences are admitted in arrival order while the
per-step token budget, the sequence cap and the KV block pool allow. A prompt longer than the
remaining budget is prefilled in chunks over several steps; its last chunk may run past the
budget by up to a quarter of it (``Scheduler.chunk_size``). When a running sequence needs a
new KV block and none is free, the most recently admitted sequence is preempted: its blocks are
freed and it goes back to the front of the queue, to be recomputed later (its cached prefix
blocks usually survive, so recomputing is cheap).

Sequences carry a priority (lower first: interactive requests before batch lines). Each step
serves the classes in order: a class's running sequences, then its waiting ones, then the
next class's. The waiting queue is kept in priority order, and a waiting sequence that finds
no free slot or blocks preempts the newest running sequence of a lower class. A step that
prefills a higher class's prompt carries only decodes of the lower classes: their prefills
(new ones and chunks under way) wait a step, so a batch's prompts do not lengthen the step that
brings an interactive request its first token. And while interactive requests are about (one
ran or waited within the last :data:`INTERACTIVE_MEMORY_STEPS` steps), the classes below it
(priority > 0) prefill at most a quarter of the step budget per step (``background_prefill``):
a wave of batch lines admitted together would otherwise fill whole steps of
``max_num_batched_tokens``, and an interactive request arriving during one waits for all of
it. Without interactive traffic, batch work has the whole budget (big prefill steps are the
cheapest per token). So batch work fills whatever interactive traffic leaves, and gives way to
it within one short step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kakehashi.engine.block_manager import BlockManager
from kakehashi.engine.sequence import Sequence, SequenceStatus

INTERACTIVE_MEMORY_STEPS = 8
"""Steps after the last interactive (priority 0) sequence during which batch prefill stays
short: an interactive client's next request usually follows within a few steps."""


@dataclass(frozen=True, slots=True)
class ScheduledSequence:
    """One sequence's share of a step: tokens ``[start, start + num_tokens)`` are fed.

    ``samples`` is True when the chunk reaches the sequence's last token, so the step picks
    its next token.
    """

    seq: Sequence
    start: int
    num_tokens: int
    samples: bool

    @classmethod
    def of(cls, seq: Sequence, num_tokens: int) -> ScheduledSequence:
        start = seq.num_computed_tokens
        return cls(seq, start, num_tokens, start + num_tokens == seq.num_tokens)

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    """The plan for one step."""

    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    """Owns the waiting queue and the running list; pure Python over token ids."""

    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.background_prefill = max(1, max_num_batched_tokens // 4)
        self._steps_since_interactive = INTERACTIVE_MEMORY_STEPS
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start, for metrics and tests

    def add(self, seq: Sequence) -> None:
        """Queue ``seq`` behind every waiting sequence of its priority or higher."""
        seq.status = SequenceStatus.WAITING
        position = len(self.waiting)
        while position > 0 and self.waiting[position - 1].priority > seq.priority:
            position -= 1
        self.waiting.insert(position, seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        # Running sequences by priority, oldest first within each: preemption for blocks takes
        # from the far end, the newest of the lowest class.
        queue = deque(sorted(self.running, key=_priority))
        scheduled: list[Sequence] = []
        admitted: list[Sequence] = []
        held: list[Sequence] = []  # lower-class prefills that sit this step out
        short_of_blocks = prefill_above = False
        background = self._background_allowance()  # prefill tokens left for priority > 0
        levels = sorted({s.priority for s in self.running} | {s.priority for s in self.waiting})
        for level in levels:
            prefills = False
            # 1. This class's running sequences (only its decodes, if a higher class prefills).
            while queue and queue[0].priority == level and budget > 0:
                seq = queue.popleft()
                if seq.num_uncomputed_tokens > 1 and (
                    prefill_above
                    or (seq.priority > 0 and background is not None and background <= 0)
                ):
                    held.append(seq)
                    continue
                n = self._tokens_for(seq, budget, background)
                while not bm.can_append(seq, seq.num_computed_tokens + n):
                    victim = queue.pop() if queue else seq
                    self._preempt(victim)
                    out.preempted.append(victim)
                    short_of_blocks = True
                    if victim is seq:
                        break
                else:
                    bm.append_slots(seq, seq.num_computed_tokens + n)
                    out.scheduled.append(ScheduledSequence.of(seq, n))
                    scheduled.append(seq)
                    budget -= n
                    if n > 1:
                        prefills = True
                        background = _less(background, n if seq.priority > 0 else 0)
            # 2. This class's waiting sequences, unless running ones just ran out of blocks or
            # a higher class prefills; lower classes give up their slots and blocks to them.
            while not (short_of_blocks or prefill_above) and budget > 0 and self.waiting:
                seq = self.waiting[0]
                if seq.priority != level or bm.prefix_in_flight(seq):
                    break
                if seq.priority > 0 and background is not None and background <= 0:
                    break
                running = len(scheduled) + len(queue) + len(held) + len(admitted)
                full = running >= self.max_num_seqs
                if full or not bm.can_allocate(seq):
                    if queue and queue[-1].priority > level:
                        victim = queue.pop()
                        self._preempt(victim)
                        out.preempted.append(victim)
                        continue
                    break
                self.waiting.popleft()
                cached = bm.allocate(seq)
                if seq.num_cached_tokens is None:
                    seq.num_cached_tokens = cached
                seq.status = SequenceStatus.RUNNING
                n = self._tokens_for(seq, budget, background)
                out.scheduled.append(ScheduledSequence.of(seq, n))
                admitted.append(seq)
                budget -= n
                background = _less(background, n if seq.priority > 0 else 0)
                prefills = True
            prefill_above = prefill_above or prefills
        # Out of budget (or held): the rest keep their state and go first next step.
        self.running = [*scheduled, *queue, *held, *admitted]
        return out

    def _background_allowance(self) -> int | None:
        """Prefill tokens the classes below interactive may take this step (None: no limit
        but the step's)."""
        if any(s.priority == 0 for s in (*self.running, *self.waiting)):
            self._steps_since_interactive = 0
        else:
            self._steps_since_interactive += 1
        if self._steps_since_interactive <= INTERACTIVE_MEMORY_STEPS:
            return self.background_prefill
        return None

    def _tokens_for(self, seq: Sequence, budget: int, background: int | None) -> int:
        """Tokens ``seq`` feeds this step: a background prefill stays within what is left of
        ``background_prefill``, any other chunk is :meth:`chunk_size`."""
        remaining = seq.num_uncomputed_tokens
        if seq.priority > 0 and remaining > 1 and background is not None:
            return max(1, min(remaining, budget, background))
        return self.chunk_size(remaining, budget)

    def chunk_size(self, remaining: int, budget: int) -> int:
        """Tokens a sequence with ``remaining`` uncomputed ones feeds when ``budget`` is left.

        The whole rest when it is over the budget by at most a quarter of the step budget: a
        tail that small would otherwise cost a step of its own, and a step passes over all the
        weights however few tokens it has (on a CPU, as long as a decode step). So a step
        holds at most 1.25x ``max_num_batched_tokens`` tokens.
        """
        if remaining <= budget + self.max_num_batched_tokens // 4:
            return remaining
        return budget

    def _preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks; it waits again, first of its priority class."""
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        position = 0
        while position < len(self.waiting) and self.waiting[position].priority < seq.priority:
            position += 1
        self.waiting.insert(position, seq)

    def finish(self, seq: Sequence) -> None:
        """Take a finished sequence out of the running list and free its blocks."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def abort(self, request_id: str) -> Sequence | None:
        """Remove a sequence wherever it is; returns it, or None if unknown."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq)
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.status = SequenceStatus.FINISHED
                return seq
        return None


def _less(allowance: int | None, used: int) -> int | None:
    return None if allowance is None else allowance - used


def _priority(seq: Sequence) -> int:
    return seq.priority
