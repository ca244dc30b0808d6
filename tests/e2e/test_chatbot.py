"""Chatbot against a real kakehashi server on a tiny model: the history grows, is fitted to the
model's window (dropping or summarizing the oldest turns, keeping the system message), streams
like it answers whole, and survives save and load."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.common import API_KEY, LLAMA_MODEL, MAX_MODEL_LEN
from kakehashi.client import Chatbot, ContextWindowExceeded, ModelNotFound, Trim
from support.server import ServerProcess

SYSTEM = "You are a helpful assistant."
REPLY = 8


def bot(server: ServerProcess, **options: object) -> Chatbot:
    settings: dict[str, object] = {"temperature": 0, "max_tokens": REPLY, "system": SYSTEM}
    settings.update(options)
    return Chatbot(
        LLAMA_MODEL, provider="kakehashi", base_url=server.base_url, api_key=API_KEY, **settings
    )


def test_history_grows_and_usage_adds_up(llama_server: ServerProcess) -> None:
    chat = bot(llama_server)
    assert chat.context_window == MAX_MODEL_LEN  # from the model's card
    first = chat.chat("Where is the capital of Japan?")
    second = chat.chat("And its population?")
    assert [m["role"] for m in chat.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert [m["content"] for m in chat.messages][2::2] == [first, second]
    last = chat.usage.last
    assert last is not None and last.completion_tokens <= REPLY
    assert last.prompt_tokens == chat.counter.count_messages(chat.messages[:-1])
    assert chat.counter.exact is True
    assert chat.usage.total.total_tokens > last.total_tokens
    chat.reset()
    assert chat.messages == [{"role": "system", "content": SYSTEM}]


def test_trimming_drops_the_oldest_turns_at_the_budget(llama_server: ServerProcess) -> None:
    trims: list[Trim] = []
    chat = bot(llama_server, on_trim=trims.append)
    budget = MAX_MODEL_LEN - REPLY
    prompts = [f"Question {i}: tell me about bridges over rivers" for i in range(40)]
    for prompt in prompts:
        before = [m for m in chat.messages if m["role"] != "system"]
        chat.chat(prompt)
        if not trims or trims[-1] is not chat.last_trim:
            continue
        trim = trims[-1]
        assert chat.messages[0] == {"role": "system", "content": SYSTEM}
        kept = chat.messages[1:-1]
        # the oldest turns went, in order, and the new prompt stayed
        assert [*before[2 * trim.dropped :], {"role": "user", "content": prompt}] == kept
        assert trim.prompt_tokens <= budget
        # one turn fewer dropped would not have fit: no more went than needed
        with_one_more = [chat.messages[0], *before[2 * trim.dropped - 2 :], kept[-1]]
        assert chat.counter.count_messages(with_one_more) > budget
    assert trims, "40 turns should overflow a 512-token window"


def test_summarize_keeps_what_was_dropped(llama_server: ServerProcess) -> None:
    chat = bot(llama_server, overflow="summarize", on_trim=lambda trim: None)
    while chat.last_trim is None:
        chat.chat("Tell me one more thing about the bridge at Kintai.")
    assert chat.last_trim.summarized
    assert chat.summary
    system = chat.messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith(SYSTEM + "\n\nSummary of the earlier conversation: ")
    assert chat.last_trim.prompt_tokens <= MAX_MODEL_LEN - REPLY


@pytest.mark.slow
def test_two_hundred_turns_never_overflow(llama_server: ServerProcess) -> None:
    trims: list[Trim] = []
    chat = bot(llama_server, on_trim=trims.append)
    for turn in range(200):
        chat.chat(f"Turn {turn}: what do you think about it?")  # the server refuses overflows
        assert chat.usage.last is not None
        assert chat.usage.last.prompt_tokens + REPLY <= MAX_MODEL_LEN
        assert chat.messages[0]["role"] == "system"
    assert len(trims) > 100


def test_streaming_equals_whole_answers_at_temperature_zero(llama_server: ServerProcess) -> None:
    streamed, whole = bot(llama_server, stream=True), bot(llama_server, stream=False)
    pieces: list[str] = []
    for prompt in ("Hello!", "Tell me a story about a bridge.", "Why?"):
        answer = streamed.chat(prompt, on_text=pieces.append)
        assert answer == whole.chat(prompt)
    assert len(pieces) > 3 and "".join(pieces).endswith(answer)
    assert streamed.messages == whole.messages
    assert streamed.usage.last == whole.usage.last


def test_logprobs_of_each_token(llama_server: ServerProcess) -> None:
    chat = bot(llama_server)
    answer = chat.chat("Write a one-sentence bedtime story about a unicorn.", logprobs=3)
    tokens = chat.last_logprobs
    assert len(tokens) == chat.usage.last.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in tokens).startswith(answer[:3])
    for token in tokens:
        assert len(token.top) == 3 and token.logprob <= 0
        assert [p for _, p in token.top] == sorted((p for _, p in token.top), reverse=True)


def test_save_and_load_round_trip(llama_server: ServerProcess, tmp_path: Path) -> None:
    chat = bot(llama_server)
    chat.chat("Hello!")
    chat.chat("How are you?")
    path = tmp_path / "conversation.json"
    chat.save(path)
    again = bot(llama_server, system=None).load(path)
    assert again.messages == chat.messages
    assert again.usage == chat.usage
    assert again.chat("Go on.") == chat.chat("Go on.")


def test_errors_are_clear(llama_server: ServerProcess, tmp_path: Path) -> None:
    retired = Chatbot(
        "text-davinci-003",
        provider="kakehashi",
        base_url=llama_server.base_url,
        api_key=API_KEY,
    )
    with pytest.raises(ModelNotFound) as caught:
        retired.chat("hi")
    assert caught.value.replacement == "gpt-3.5-turbo-instruct"
    assert "shut down on 2024-01-04" in str(caught.value)
    with pytest.raises(ContextWindowExceeded, match="does not fit the model's context window"):
        bot(llama_server).chat("bridge " * 600)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(Exception, match="not a saved conversation"):
        bot(llama_server).load(tmp_path / "bad.json")
