"""LocalBackend on a real tiny Llama: the adapter between the wire shapes and the engine."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kakehashi.backends.base import Call, StreamUsage
from kakehashi.backends.local import LocalBackend, default_model_id, load_local_model
from kakehashi.engine.models.tiny import make_tiny_model
from kakehashi.errors import ContextLengthExceededError, InvalidRequestError
from kakehashi.settings import Settings
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest
from kakehashi.wire.completions import CompletionRequest
from kakehashi.wire.stream_frames import StreamFrames
from support.openapi import validate

T = TypeVar("T")
MAX_MODEL_LEN = 128
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


class Runner:
    """The backend, started once, and the event loop its engine streams into."""

    def __init__(self, backend: LocalBackend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def chat(self, **fields: Any) -> Any:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, **fields}
        response = self.run(self.backend.chat(ChatCompletionRequest(**body), Call("tiny")))
        validate("CreateChatCompletionResponse", response.model_dump(mode="json"))
        return response

    def complete(self, **fields: Any) -> Any:
        body = {"model": "tiny", "prompt": "The bridge", "max_tokens": 6, **fields}
        return self.run(self.backend.completion(CompletionRequest(**body), Call("tiny")))

    def collect(self, stream: Any) -> list[Any]:
        async def gather() -> list[Any]:
            return [chunk async for chunk in stream]

        return self.run(gather())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", arch="llama")
    settings = Settings(model=str(model_dir), served_model_name="tiny", max_model_len=MAX_MODEL_LEN)
    backend = LocalBackend(lambda: load_local_model(settings), model_ids=["tiny"])
    loop = asyncio.new_event_loop()
    runner = Runner(backend, loop)
    runner.run(backend.start())
    try:
        yield runner
    finally:
        runner.run(backend.stop())
        loop.close()


def test_default_model_id(tmp_path: Path) -> None:
    assert default_model_id(Settings()) == "smollm2-135m-instruct"
    assert default_model_id(Settings(model="tiny-random")) == "tiny-random"
    assert default_model_id(Settings(model=str(tmp_path))) == tmp_path.name
    gguf = tmp_path / "Model-7B.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    assert default_model_id(Settings(model=str(gguf))) == "Model-7B.Q4_K_M"
    assert default_model_id(Settings(model="ollama:qwen2.5:0.5b")) == "qwen2.5:0.5b"
    assert default_model_id(Settings(model="lmstudio:org/repo")) == "org/repo"
    assert default_model_id(Settings(model="Org/Model-1B")) == "Org/Model-1B"
    assert default_model_id(Settings(model="Org/Model-1B", served_model_name="m")) == "m"


def test_greedy_is_deterministic_and_usage_adds_up(tiny: Runner) -> None:
    first, second = tiny.chat(temperature=0), tiny.chat(temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    usage = first.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 8
    assert first.model == "tiny" and first.system_fingerprint.startswith("fp_")


def test_seeded_choices_differ_and_reproduce(tiny: Runner) -> None:
    first = tiny.chat(n=3, seed=7, temperature=1.5, max_tokens=10)
    again = tiny.chat(n=3, seed=7, temperature=1.5, max_tokens=10)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage.prompt_tokens == tiny.chat(max_tokens=1).usage.prompt_tokens


def test_chat_logprobs_are_consistent(tiny: Runner) -> None:
    response = tiny.chat(temperature=0, logprobs=True, top_logprobs=5)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5
        assert tops == sorted(tops, reverse=True)
        assert sum(math.exp(v) for v in tops) <= 1 + 1e-6
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].bytes == entry.bytes
        assert entry.logprob == pytest.approx(tops[0], abs=1e-4)


def test_logit_bias_bans_the_greedy_token(tiny: Runner) -> None:
    first = tiny.chat(temperature=0, max_tokens=1, logprobs=True).choices[0].logprobs.content[0]
    tokenizer = tiny.backend.loaded.engine.tokenizer
    [token_id] = [
        i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == bytes(first.bytes)
    ]
    banned = tiny.chat(temperature=0, max_tokens=1, logprobs=True, logit_bias={str(token_id): -100})
    assert banned.choices[0].logprobs.content[0].bytes != first.bytes


def test_stop_string_is_not_returned(tiny: Runner) -> None:
    full = tiny.chat(temperature=0, max_tokens=30).choices[0].message.content
    stop = next(full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].isprintable())
    cut = tiny.chat(temperature=0, max_tokens=30, stop=[stop]).choices[0]
    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_stream_matches_whole_response(tiny: Runner) -> None:
    whole = tiny.chat(temperature=0, max_tokens=12).choices[0].message.content
    request = ChatCompletionRequest(
        model="tiny",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    call = Call("tiny")
    *chunks, end = tiny.collect(tiny.backend.stream_chat(request, call))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json"))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert isinstance(end, StreamUsage) and end.usage.completion_tokens == 12
    assert (call.prompt_tokens, call.completion_tokens) == (end.usage.prompt_tokens, 12)


def test_a_reader_that_falls_behind_gets_fewer_chunks_with_the_same_text_and_logprobs(
    tiny: Runner,
) -> None:
    fields = {"temperature": 0, "max_tokens": 40, "logprobs": True, "top_logprobs": 3}
    whole = tiny.chat(**fields).choices[0]
    request = ChatCompletionRequest(model="tiny", messages=MESSAGES, stream=True, **fields)

    async def read_slowly() -> list[Any]:
        chunks = []
        async for chunk in tiny.backend.stream_chat(request, Call("tiny")):
            chunks.append(chunk)
            if len(chunks) == 2:  # the role chunk and the first token's
                await asyncio.sleep(0.5)  # the engine goes on meanwhile
        return chunks

    chunks = [c for c in tiny.run(read_slowly()) if isinstance(c, ChatCompletionChunk)]
    frames = StreamFrames()
    for chunk in chunks:
        body = frames.frame(chunk).removeprefix(b"data: ")
        validate("CreateChatCompletionStreamResponse", json.loads(body))
    entries = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    per_chunk = [
        len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs
    ]
    assert max(per_chunk) > 1  # tokens that piled up came as one chunk
    assert len(chunks) < 40
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.message.content
    )
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in whole.logprobs.content]
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "length"


def test_context_length(tiny: Runner) -> None:
    long = [{"role": "user", "content": "word " * MAX_MODEL_LEN}]
    with pytest.raises(ContextLengthExceededError) as caught:
        tiny.chat(messages=long)
    assert caught.value.param == "messages"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in caught.value.message
    with pytest.raises(ContextLengthExceededError) as caught:
        tiny.chat(max_tokens=MAX_MODEL_LEN)
    assert "in the completion" in caught.value.message
    with pytest.raises(ContextLengthExceededError) as caught:
        tiny.complete(max_tokens=MAX_MODEL_LEN)
    assert caught.value.param == "prompt"
    # Without max_tokens a chat may use the rest of the window.
    assert tiny.chat(max_tokens=None, temperature=0).usage.total_tokens <= MAX_MODEL_LEN


def test_legacy_echo_logprobs(tiny: Runner) -> None:
    response = tiny.complete(echo=True, logprobs=2, temperature=0)
    [choice] = response.choices
    generated = tiny.complete(temperature=0).choices[0].text
    assert choice.text == "The bridge" + generated
    logprobs = choice.logprobs
    # The model read a BOS the tokenizer added; the tokens leave it out and spell the text.
    count = response.usage.prompt_tokens - 1 + response.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == count
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == count
    assert logprobs.tokens[:2] == ["The", " bridge"]
    for token, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert value <= 0 and top[token] == value  # the first token too: it follows the BOS
        assert len(top) <= 3
    assert logprobs.text_offset[:3] == [0, 3, 10]
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_legacy_prompts_and_scoring(tiny: Runner) -> None:
    tokenizer = tiny.backend.loaded.engine.tokenizer
    ids = tokenizer.encode("The bridge", add_special_tokens=True)
    response = tiny.complete(prompt=[ids, ids[:2]], n=2, temperature=0)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text == response.choices[1].text
    assert response.choices[0].text == tiny.complete(temperature=0).choices[0].text
    assert response.usage.prompt_tokens == len(ids) + 2
    scored = tiny.complete(prompt=ids, echo=True, max_tokens=0, logprobs=0)
    [choice] = scored.choices
    assert choice.text == "The bridge" and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == len(ids)
    with pytest.raises(InvalidRequestError):
        tiny.complete(prompt=[tokenizer.vocab_size])


def test_disconnect_aborts_the_engine_request(
    tiny: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = ChatCompletionRequest(
        model="tiny", messages=MESSAGES, max_tokens=80, stream=True, n=2
    )
    engine = tiny.backend.loaded.engine
    aborted: list[str] = []
    real_abort = engine.abort  # type: ignore[attr-defined]

    def watched_abort(request_id: str) -> None:
        aborted.append(request_id)
        real_abort(request_id)

    monkeypatch.setattr(engine, "abort", watched_abort)

    async def read_a_little() -> None:
        stream = tiny.backend.stream_chat(request, Call("tiny"))
        async for chunk in stream:
            if isinstance(chunk, ChatCompletionChunk) and chunk.choices[0].delta.content:
                break
        await stream.aclose()  # type: ignore[attr-defined]

    tiny.run(read_a_little())
    assert sorted(r.rsplit("-", 1)[1] for r in aborted) == ["0", "1"]
    assert tiny.chat(max_tokens=2).usage.completion_tokens == 2
