"""The legacy Completions API through the official SDK, against a real server."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest

from e2e.common import LLAMA_MODEL, TinyTokenizer, assert_same_counts, stop_candidate

PROMPT = "The bridge over the river"
OTHER_PROMPT = "Once upon a time"


def complete(client: openai.OpenAI, **params: Any) -> Any:
    params.setdefault("prompt", PROMPT)
    params.setdefault("max_tokens", 12)
    return client.completions.create(model=LLAMA_MODEL, **params)


def test_string_prompt(client: openai.OpenAI, llama_tokenizer: TinyTokenizer) -> None:
    res = complete(client, temperature=0)
    assert res.object == "text_completion"
    assert res.id.startswith("cmpl-")
    assert res.model == LLAMA_MODEL
    [choice] = res.choices
    assert choice.index == 0 and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert res.usage.prompt_tokens == len(llama_tokenizer.encode(PROMPT))
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    again = complete(client, temperature=0)
    assert again.choices[0].text == choice.text


def test_list_of_string_prompts(client: openai.OpenAI) -> None:
    res = complete(client, prompt=[PROMPT, OTHER_PROMPT], temperature=0)
    assert [choice.index for choice in res.choices] == [0, 1]
    assert res.choices[0].text == complete(client, temperature=0).choices[0].text
    assert (
        res.choices[1].text == complete(client, prompt=OTHER_PROMPT, temperature=0).choices[0].text
    )

    with_n = complete(client, prompt=[PROMPT, OTHER_PROMPT], n=2, temperature=0)
    assert sorted(choice.index for choice in with_n.choices) == [0, 1, 2, 3]
    by_index = {choice.index: choice.text for choice in with_n.choices}
    # OpenAI numbers choices prompt by prompt: prompt i, sample j → index i * n + j
    assert by_index[0] == by_index[1] == res.choices[0].text
    assert by_index[2] == by_index[3] == res.choices[1].text


def test_token_id_prompts(client: openai.OpenAI, llama_tokenizer: TinyTokenizer) -> None:
    ids = llama_tokenizer.encode(PROMPT)
    other_ids = llama_tokenizer.encode(OTHER_PROMPT)
    text = complete(client, temperature=0).choices[0].text

    res = complete(client, prompt=ids, temperature=0)
    assert res.choices[0].text == text
    assert res.usage.prompt_tokens == len(ids)

    both = complete(client, prompt=[ids, other_ids], temperature=0)
    assert [choice.index for choice in both.choices] == [0, 1]
    assert both.choices[0].text == text
    assert both.usage.prompt_tokens == len(ids) + len(other_ids)


def test_echo(client: openai.OpenAI) -> None:
    plain = complete(client, temperature=0).choices[0].text
    res = complete(client, temperature=0, echo=True)
    assert res.choices[0].text == PROMPT + plain


def test_echo_with_logprobs(client: openai.OpenAI, llama_tokenizer: TinyTokenizer) -> None:
    plain = complete(client, temperature=0, max_tokens=4, logprobs=1)
    res = complete(client, temperature=0, max_tokens=4, logprobs=1, echo=True)
    [choice] = res.choices
    logprobs = choice.logprobs
    assert choice.text == PROMPT + plain.choices[0].text
    # The model read the BOS its tokenizer adds, but the tokens spell exactly the echoed text,
    # offsets included, as lm-eval-style scorers expect.
    prompt_tokens = len(llama_tokenizer.encode(PROMPT, special=False))
    assert res.usage.prompt_tokens == prompt_tokens + 1
    assert len(logprobs.tokens) == prompt_tokens + res.usage.completion_tokens
    assert "".join(logprobs.tokens[:prompt_tokens]) == PROMPT
    assert logprobs.text_offset[0] == 0
    assert logprobs.text_offset[:prompt_tokens] == [
        len("".join(logprobs.tokens[:i])) for i in range(prompt_tokens)
    ]
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.token_logprobs[0] <= 0  # scored: it follows the BOS
    # the generated part is the same as without echo
    completion_part = slice(prompt_tokens, None)
    assert logprobs.tokens[completion_part] == plain.choices[0].logprobs.tokens
    for echoed, alone in zip(
        logprobs.token_logprobs[completion_part],
        plain.choices[0].logprobs.token_logprobs,
        strict=True,
    ):
        assert echoed == pytest.approx(alone, abs=1e-4)


def test_echo_scores_the_prompt_with_zero_max_tokens(client: openai.OpenAI) -> None:
    res = complete(client, max_tokens=0, echo=True, logprobs=1)
    [choice] = res.choices
    assert choice.text == PROMPT
    assert res.usage.completion_tokens == 0
    assert res.usage.total_tokens == res.usage.prompt_tokens
    assert "".join(choice.logprobs.tokens) == PROMPT  # no BOS
    assert len(choice.logprobs.tokens) == res.usage.prompt_tokens - 1
    assert all(value <= 0 for value in choice.logprobs.token_logprobs)


def _check_legacy_logprobs(choice: Any, k: int, prompt_offset: int) -> None:
    logprobs = choice.logprobs
    count = len(logprobs.tokens)
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == count
    assert len(logprobs.text_offset) == count
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert logprob <= 0
        assert len(top) <= k + 1  # the k most likely, plus the sampled token if not among them
        assert sum(math.exp(value) for value in top.values()) <= 1 + 1e-6
        if token in top:
            assert top[token] == pytest.approx(logprob, abs=1e-4)
    if "".join(logprobs.tokens) == choice.text:  # whole characters: offsets walk the text
        assert logprobs.text_offset[0] in (0, prompt_offset)
        start = logprobs.text_offset[0]
        for i, offset in enumerate(logprobs.text_offset):
            assert offset == start + len("".join(logprobs.tokens[:i]))


@pytest.mark.parametrize("k", [0, 1, 5])
def test_logprobs_legacy_shape(client: openai.OpenAI, k: int) -> None:
    res = complete(client, temperature=0, logprobs=k)
    [choice] = res.choices
    assert len(choice.logprobs.tokens) == res.usage.completion_tokens
    _check_legacy_logprobs(choice, k, prompt_offset=len(PROMPT))
    if k:  # greedy: the chosen token is the most likely one
        for token, logprob, top in zip(
            choice.logprobs.tokens,
            choice.logprobs.token_logprobs,
            choice.logprobs.top_logprobs,
            strict=True,
        ):
            assert max(top.values()) == pytest.approx(logprob, abs=1e-4)
            assert len(top) >= 1 and token in top


def test_n_and_seed(client: openai.OpenAI) -> None:
    res = complete(client, n=3, temperature=1, seed=9)
    assert [choice.index for choice in res.choices] == [0, 1, 2]
    assert len({choice.text for choice in res.choices}) > 1
    again = complete(client, n=3, temperature=1, seed=9)
    assert [c.text for c in again.choices] == [c.text for c in res.choices]


def test_stop(client: openai.OpenAI) -> None:
    full = complete(client, temperature=0, max_tokens=40).choices[0].text
    stop = stop_candidate(full)
    res = complete(client, temperature=0, max_tokens=40, stop=[stop])
    assert res.choices[0].finish_reason == "stop"
    assert res.choices[0].text == full[: full.index(stop)]


def test_max_tokens_length(client: openai.OpenAI) -> None:
    res = complete(client, temperature=0, max_tokens=5)
    assert res.choices[0].finish_reason == "length"
    assert res.usage.completion_tokens == 5


def test_stream(client: openai.OpenAI) -> None:
    whole = complete(client, temperature=0, max_tokens=15)
    chunks = list(complete(client, temperature=0, max_tokens=15, stream=True))
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == whole.choices[0].finish_reason
    assert all(reason is None for reason in finished[:-1])


def test_stream_include_usage(client: openai.OpenAI) -> None:
    whole = complete(client, temperature=0, max_tokens=6)
    chunks = list(
        complete(
            client, temperature=0, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == []
    assert_same_counts(chunks[-1].usage, whole.usage)
