"""Chat Completions through the official SDK, against a real server on a tiny Llama."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.common import (
    LLAMA_MODEL,
    MESSAGES,
    TinyTokenizer,
    assert_same_counts,
    hf_chat_prompt_tokens,
    stop_candidate,
)


def chat(client: openai.OpenAI, **params: Any) -> Any:
    """One chat completion of MESSAGES (overridable) on the tiny Llama."""
    params.setdefault("messages", MESSAGES)
    params.setdefault("max_tokens", 16)
    return client.chat.completions.create(model=LLAMA_MODEL, **params)


def test_system_and_user_message(client: openai.OpenAI, tiny_llama_dir: Path) -> None:
    before = int(time.time())
    res = chat(client, temperature=0)
    assert res.object == "chat.completion"
    assert res.id.startswith("chatcmpl-")
    assert res.model == LLAMA_MODEL
    assert before - 1 <= res.created <= time.time() + 1
    [choice] = res.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert res.usage.prompt_tokens == hf_chat_prompt_tokens(tiny_llama_dir, MESSAGES)
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    first = chat(client, temperature=0, max_tokens=24)
    second = chat(client, temperature=0, max_tokens=24)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens == second.usage.completion_tokens
    assert first.id != second.id


def test_multi_turn_with_assistant_history(client: openai.OpenAI, tiny_llama_dir: Path) -> None:
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": "Once upon a time there was a bridge."},
        {"role": "user", "content": "And then?"},
    ]
    res = chat(client, messages=messages, temperature=0)
    assert res.choices[0].message.content
    assert res.usage.prompt_tokens == hf_chat_prompt_tokens(tiny_llama_dir, messages)
    single = chat(client, temperature=0)
    assert res.usage.prompt_tokens > single.usage.prompt_tokens


def test_n_choices(client: openai.OpenAI) -> None:
    res = chat(client, n=3, temperature=1, seed=11, max_tokens=12, logprobs=True)
    assert [choice.index for choice in res.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in res.choices]
    assert len(set(texts)) > 1, f"three samples at temperature 1 are identical: {texts}"
    generated = sum(len(choice.logprobs.content) for choice in res.choices)
    assert res.usage.completion_tokens == generated
    assert res.usage.prompt_tokens == chat(client, temperature=0, max_tokens=1).usage.prompt_tokens

    greedy = chat(client, n=3, temperature=0)
    assert len({choice.message.content for choice in greedy.choices}) == 1


def test_stop_strings(client: openai.OpenAI) -> None:
    full = chat(client, temperature=0, max_tokens=40).choices[0].message.content
    assert len(full) >= 12, f"the tiny model's greedy output is too short: {full!r}"
    stop = stop_candidate(full)
    expected = full[: full.index(stop)]

    res = chat(client, temperature=0, max_tokens=40, stop=[stop, "never-generated-zzz"])
    [choice] = res.choices
    assert choice.finish_reason == "stop"
    assert choice.message.content == expected
    assert stop not in choice.message.content

    single = chat(client, temperature=0, max_tokens=40, stop=stop)  # a plain string works too
    assert single.choices[0].message.content == expected


def test_seed_reproducibility(client: openai.OpenAI) -> None:
    first = chat(client, temperature=1, seed=1234, max_tokens=20).choices[0].message.content
    again = chat(client, temperature=1, seed=1234, max_tokens=20).choices[0].message.content
    other = chat(client, temperature=1, seed=4321, max_tokens=20).choices[0].message.content
    assert first == again
    assert first != other


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 7])
def test_token_limit_finishes_with_length(client: openai.OpenAI, field: str, limit: int) -> None:
    params: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, field: limit}
    res = client.chat.completions.create(model=LLAMA_MODEL, **params)
    assert res.choices[0].finish_reason == "length"
    assert res.usage.completion_tokens == limit


def _tokens(res: Any) -> list[str]:
    return [entry.token for entry in res.choices[0].logprobs.content]


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_stop_repetition(client: openai.OpenAI, penalty: str) -> None:
    # The random tiny model's greedy output falls into a loop; a strong penalty must break it.
    baseline = _tokens(chat(client, temperature=0, max_tokens=40, logprobs=True))
    assert len(set(baseline)) < len(baseline), f"greedy output has no repetition: {baseline}"
    penalised = _tokens(chat(client, temperature=0, max_tokens=40, logprobs=True, **{penalty: 2.0}))
    assert len(set(penalised)) == len(penalised), f"{penalty}=2 still repeats: {penalised}"


def test_negative_frequency_penalty_accepted(client: openai.OpenAI) -> None:
    res = chat(client, temperature=0, frequency_penalty=-2.0, presence_penalty=-2.0)
    assert res.choices[0].message.content


def test_logit_bias_forces_a_token(client: openai.OpenAI, llama_tokenizer: TinyTokenizer) -> None:
    hello = llama_tokenizer.token_id("Hello")
    res = chat(client, temperature=0, max_tokens=3, logit_bias={str(hello): 100}, logprobs=True)
    assert res.choices[0].message.content == "HelloHelloHello"
    assert _tokens(res) == ["Hello"] * 3


def test_logit_bias_bans_a_token(client: openai.OpenAI, llama_tokenizer: TinyTokenizer) -> None:
    greedy = chat(client, temperature=0, max_tokens=1, logprobs=True).choices[0].logprobs
    first = greedy.content[0]
    banned_id = llama_tokenizer.id_of_bytes(bytes(first.bytes))
    res = chat(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={banned_id: -100})
    assert res.choices[0].logprobs.content[0].bytes != first.bytes


def _check_token_bytes(token: str, raw: list[int]) -> None:
    """``bytes`` are the token's UTF-8 encoding, or, for a token that is not whole UTF-8
    characters, OpenAI's ``bytes:\\xNN...`` spelling of them."""
    if token.startswith("bytes:"):
        assert token == "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
    else:
        assert raw == list(token.encode("utf-8"))


def _check_token_logprob(entry: Any, top_n: int) -> None:
    assert entry.logprob <= 0
    _check_token_bytes(entry.token, entry.bytes)
    assert len(entry.top_logprobs) == top_n
    top = [alt.logprob for alt in entry.top_logprobs]
    assert top == sorted(top, reverse=True)
    assert all(value <= 0 for value in top)
    assert sum(math.exp(value) for value in top) <= 1 + 1e-6
    for alt in entry.top_logprobs:
        _check_token_bytes(alt.token, alt.bytes)
        if alt.bytes == entry.bytes:
            assert alt.logprob == pytest.approx(entry.logprob, abs=1e-4)


@pytest.mark.parametrize("top_n", [0, 1, 5, 20])
def test_logprobs(client: openai.OpenAI, top_n: int) -> None:
    res = chat(client, temperature=0, max_tokens=12, logprobs=True, top_logprobs=top_n)
    [choice] = res.choices
    content = choice.logprobs.content
    assert len(content) == res.usage.completion_tokens
    for entry in content:
        _check_token_logprob(entry, top_n)
        if top_n:  # greedy: the chosen token is the most likely one
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
    if choice.finish_reason == "length":  # nothing held back: the bytes spell the text, with
        # invalid UTF-8 replaced by U+FFFD as Hugging Face decoders do
        joined = b"".join(bytes(entry.bytes) for entry in content)
        assert joined.decode("utf-8", errors="replace") == choice.message.content


def test_logprobs_when_sampling(client: openai.OpenAI) -> None:
    res = chat(client, temperature=1, seed=5, max_tokens=12, logprobs=True, top_logprobs=5)
    for entry in res.choices[0].logprobs.content:
        _check_token_logprob(entry, 5)


def test_usage_arithmetic(client: openai.OpenAI) -> None:
    res = chat(client, temperature=0, max_tokens=9, logprobs=True)
    usage = res.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == len(res.choices[0].logprobs.content)


def _stream(client: openai.OpenAI, **params: Any) -> list[Any]:
    return list(chat(client, stream=True, **params))


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0, max_tokens=20)
    chunks = _stream(client, temperature=0, max_tokens=20)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    choice_chunks = [chunk for chunk in chunks if chunk.choices]
    assert choice_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(chunk.choices[0].finish_reason is None for chunk in choice_chunks[:-1])
    assert all(chunk.usage is None for chunk in chunks)


def test_streaming_logprobs(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0, max_tokens=10, logprobs=True, top_logprobs=2)
    chunks = _stream(client, temperature=0, max_tokens=10, logprobs=True, top_logprobs=2)
    streamed = [
        entry.token
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert streamed == _tokens(whole)


def test_streaming_include_usage(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0, max_tokens=8)
    chunks = _stream(client, temperature=0, max_tokens=8, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert_same_counts(last.usage, whole.usage)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streaming_n_choices(client: openai.OpenAI) -> None:
    chunks = _stream(client, temperature=1, seed=3, n=2, max_tokens=6)
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert mine[-1].finish_reason == "length"
