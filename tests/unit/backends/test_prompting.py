"""prompting: prompts to token ids, the context budget, and SamplingParams."""

from __future__ import annotations

import pytest

from kakehashi.backends.fake import FakeChatTemplate, FakeTokenizer
from kakehashi.backends.prompting import (
    chat_prompt,
    check_legacy_options,
    completion_budget,
    legacy_prompt,
    sampling_params,
)
from kakehashi.errors import ContextLengthExceededError, InvalidRequestError
from kakehashi.wire.chat import ChatCompletionRequest
from kakehashi.wire.completions import CompletionRequest

TOKENIZER = FakeTokenizer()


def test_chat_prompt_renders_then_tokenizes() -> None:
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hé"}])
    prompt = chat_prompt(request, FakeChatTemplate(), TOKENIZER)
    assert prompt.text == "user: hé\nassistant:"
    assert prompt.ids == list(prompt.text.encode())


def test_legacy_prompt_text_ids_and_empty() -> None:
    text = legacy_prompt("ab", TOKENIZER)
    assert (text.ids, text.text) == ([FakeTokenizer.BOS, 97, 98], "ab")
    ids = legacy_prompt([FakeTokenizer.BOS, 104, 105], TOKENIZER)
    assert (ids.ids, ids.text) == ([FakeTokenizer.BOS, 104, 105], "hi")
    # Special tokens spell nothing.
    assert legacy_prompt([FakeTokenizer.EOS], TOKENIZER).text == ""
    with pytest.raises(InvalidRequestError) as caught:
        legacy_prompt([1, 300], TOKENIZER)
    assert caught.value.param == "prompt" and "300" in caught.value.message


def test_completion_budget() -> None:
    assert completion_budget(10, None, 100, "messages") == 90
    assert completion_budget(10, 90, 100, "prompt") == 90
    with pytest.raises(ContextLengthExceededError) as caught:
        completion_budget(100, None, 100, "messages")
    assert caught.value.param == "messages"
    assert "your messages resulted in 100 tokens" in caught.value.message
    with pytest.raises(ContextLengthExceededError) as caught:
        completion_budget(10, 91, 100, "prompt")
    assert "101 tokens (10 in the prompt, 91 in the completion)" in caught.value.message


def test_legacy_options() -> None:
    check_legacy_options(CompletionRequest(model="m", prompt="x", n=2, best_of=2))
    for fields, param in (({"suffix": "z"}, "suffix"), ({"best_of": 2}, "best_of")):
        with pytest.raises(InvalidRequestError) as caught:
            check_legacy_options(CompletionRequest(model="m", prompt="x", **fields))
        assert caught.value.param == param


def test_sampling_params_defaults_and_checks() -> None:
    request = CompletionRequest(
        model="m", prompt="x", stop=["", "."], logit_bias={"5": -100}, presence_penalty=0.5
    )
    params = sampling_params(request, vocab_size=258, max_tokens=7, logprobs=2, prompt_logprobs=2)
    assert (params.max_tokens, params.temperature, params.top_p) == (7, 1.0, 1.0)
    assert params.stop == (".",) and params.logit_bias == {5: -100}
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, 0.0)
    assert (params.logprobs, params.prompt_logprobs) == (2, 2)
    with pytest.raises(InvalidRequestError) as caught:
        sampling_params(request, vocab_size=5, max_tokens=1, logprobs=None)
    assert caught.value.param == "logit_bias"
