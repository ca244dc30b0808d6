"""Sequence: one request's state and its derived counts."""

from __future__ import annotations

from kakehashi.engine.params import SamplingParams
from kakehashi.engine.sequence import Sequence, SequenceStatus


def test_counts_follow_appended_tokens():
    seq = Sequence("r", [1, 2, 3], SamplingParams())
    assert seq.status is SequenceStatus.WAITING and not seq.is_finished
    assert (seq.num_tokens, seq.num_prompt_tokens, seq.num_output_tokens) == (3, 3, 0)
    assert seq.num_uncomputed_tokens == 3
    seq.num_computed_tokens = 3
    seq.append_token(9)
    seq.append_token(8)
    assert seq.prompt_token_ids == [1, 2, 3]
    assert seq.output_token_ids == [9, 8]
    assert seq.num_uncomputed_tokens == 2
    seq.status = SequenceStatus.FINISHED
    assert seq.is_finished


def test_prompt_logprobs_start_with_none_for_the_first_token():
    plain = Sequence("a", [1, 2], SamplingParams())
    assert plain.prompt_logprobs is None and not plain.needs_prompt_logprobs
    asking = Sequence("b", [1, 2], SamplingParams(prompt_logprobs=0))
    assert asking.prompt_logprobs == [None]
    assert asking.needs_prompt_logprobs
    single = Sequence("c", [1], SamplingParams(prompt_logprobs=0))
    assert not single.needs_prompt_logprobs


def test_the_prompt_list_is_copied():
    prompt = [4, 5]
    seq = Sequence("r", prompt, SamplingParams())
    seq.append_token(6)
    assert prompt == [4, 5]
