"""choices: runs per (prompt, choice), per-choice state, and usage."""

from __future__ import annotations

from kakehashi.backends.choices import Choice, finish_reason, legacy_choice, new_job, usage
from kakehashi.backends.fake import FakeTokenizer
from kakehashi.backends.prompting import Prompt, legacy_prompt
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams, TokenLogprob
from kakehashi.wire.completions import CompletionRequest


def _chunk(
    text: str, done: int, cached: int = 0, reason: FinishReason | None = None
) -> GenerationChunk:
    return GenerationChunk(
        request_id="r",
        token_ids=(ord(text[0]),) if text else (),
        text=text,
        finished=reason is not None,
        finish_reason=reason,
        prompt_tokens=0,
        completion_tokens=done,
        cached_tokens=cached,
        logprobs=tuple(TokenLogprob(ord(c), -1.0) for c in text),
    )


def test_jobs_fan_out_prompts_and_seeds() -> None:
    prompts = [Prompt([1, 2], "a"), Prompt([3], "b")]
    job = new_job("cmpl", prompts, 2, SamplingParams(seed=7))
    assert job.id.startswith("cmpl-")
    assert [(r.index, r.prompt_index, r.params.seed) for r in job.runs] == [
        (0, 0, 7),
        (1, 0, 8),
        (2, 1, 7),
        (3, 1, 8),
    ]
    assert [r.request_id for r in job.runs] == [f"{job.id}-{i}" for i in range(4)]
    unseeded = new_job("chatcmpl", prompts[:1], 2, SamplingParams())
    assert [r.params.seed for r in unseeded.runs] == [None, None]


def test_choice_state_and_usage_counts_each_prompt_once() -> None:
    job = new_job("cmpl", [Prompt([1, 2, 3], "abc"), Prompt([4], "d")], 2, SamplingParams())
    choices = [Choice(run) for run in job.runs]
    for choice, cached in zip(choices, (2, 3, 0, 0), strict=True):
        assert choice.absorb(_chunk("h", 1, cached)) == "h"
        choice.absorb(_chunk("i", 2, cached, FinishReason.LENGTH))
    assert [c.text for c in choices] == ["hi"] * 4
    assert choices[0].finish == "length" and choices[0].take_logprobs() is None
    assert usage(choices).model_dump() == {
        "prompt_tokens": 4,
        "completion_tokens": 8,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def test_legacy_choice_echoes_the_prompt_first() -> None:
    prompt = legacy_prompt("h", FakeTokenizer())
    assert prompt.ids == [FakeTokenizer.BOS, 104] and prompt.added == (1, 0)
    [run] = new_job("cmpl", [prompt], 1, SamplingParams()).runs
    request = CompletionRequest(model="m", prompt="h", echo=True, logprobs=0)
    choice = legacy_choice(run, request, FakeTokenizer())
    assert choice.absorb(_chunk("i", 1)) == "hi"
    assert choice.absorb(_chunk("", 1, reason=FinishReason.STOP)) == ""
    assert choice.text == "hi" and choice.finish == "stop"
    # The BOS the tokenizer added is read by the model but is not part of the echoed text.
    logprobs = choice.take_logprobs()
    assert logprobs.tokens == ["h", "i"] and logprobs.text_offset == [0, 1]
    plain = legacy_choice(run, CompletionRequest(model="m", prompt="h"), FakeTokenizer())
    assert plain.absorb(_chunk("i", 1)) == "i" and plain.take_logprobs() is None


def test_finish_reason_names() -> None:
    assert finish_reason(FinishReason.LENGTH) == "length"
    assert finish_reason(FinishReason.STOP) == finish_reason(None) == "stop"
