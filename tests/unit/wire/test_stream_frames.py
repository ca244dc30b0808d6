"""The fast stream frames are byte for byte what pydantic writes, for every chunk shape."""

from __future__ import annotations

import itertools

import pytest

from kakehashi.wire.chat import (
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    ChatTokenLogprob,
)
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionChoice, CompletionResponse
from kakehashi.wire.sse import encode_event
from kakehashi.wire.stream_frames import StreamFrames

# Every character class JSON escapes differently: quotes, backslashes, each control
# character, DEL, the line separators JavaScript cares about, non-ASCII and astral planes.
AWKWARD = [
    "",
    ".",
    'say "hi"\\',
    "".join(chr(c) for c in range(32)),
    "\x7f\u2028\u2029",
    "日本語 é ß",
    "emoji 🎉 and 𝄞",
    "</script><!--",
]


def _chunk(content: str | None, **extra: object) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id='chatcmpl-"odd"',
        created=1_765_000_000,
        model="tiny/模型",
        choices=[ChatChunkChoice(index=0, delta=ChatDelta(content=content))],
        **extra,  # type: ignore[arg-type]
    )


def _shapes() -> list[ChatCompletionChunk]:
    shapes = []
    for text, fingerprint in itertools.product(AWKWARD, [None, "fp_1"]):
        shapes.append(_chunk(text, system_fingerprint=fingerprint))
    first = _chunk("")
    first.choices[0].delta = ChatDelta(role="assistant", content="")
    last = _chunk(None)
    last.choices[0].delta = ChatDelta()
    last.choices[0].finish_reason = "length"
    nulls = _chunk(None, system_fingerprint=None)
    nulls.choices[0].delta = ChatDelta(role=None, content=None)
    with_usage_null = _chunk("x")
    with_usage_null.usage = None  # the gateway does this when the client asked for usage
    shapes += [first, last, nulls, with_usage_null]
    # Shapes the fast path leaves to pydantic must come out the same too.
    entry = ChatTokenLogprob(token=".", logprob=-0.5, bytes=[46], top_logprobs=[])
    logprobs = _chunk(".")
    logprobs.choices[0].logprobs = ChatChoiceLogprobs(content=[entry])
    usage = ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=Usage.of(3, 4))
    two = _chunk("a")
    two.choices.append(ChatChunkChoice(index=1, delta=ChatDelta(content="b")))
    extra = ChatCompletionChunk.model_validate(
        {"id": "c", "created": 1, "model": "m", "choices": [], "service_tier": "default"}
    )
    shapes += [logprobs, usage, two, extra]
    return shapes


@pytest.mark.parametrize("chunk", _shapes())
def test_a_frame_is_what_pydantic_writes(chunk: ChatCompletionChunk) -> None:
    frames = StreamFrames()
    assert frames.frame(chunk) == encode_event(chunk)
    assert frames.frame(chunk) == encode_event(chunk)  # from the cached prefix as well


def test_the_cached_prefix_follows_the_chunk() -> None:
    frames = StreamFrames()
    one, other = _chunk("a"), _chunk("b")
    other.id = "chatcmpl-other"
    assert frames.frame(one) == encode_event(one)
    assert frames.frame(other) == encode_event(other)
    assert b"chatcmpl-other" in frames.frame(other)


def test_other_payloads_go_through_pydantic() -> None:
    legacy = CompletionResponse(
        id="cmpl-1",
        created=1,
        model="m",
        choices=[CompletionChoice(index=0, text="t\n", logprobs=None, finish_reason=None)],
    )
    assert StreamFrames().frame(legacy) == encode_event(legacy)


def test_a_lone_surrogate_is_left_to_pydantic() -> None:
    chunk = _chunk("\ud800")
    with pytest.raises(Exception) as fast:
        StreamFrames().frame(chunk)
    with pytest.raises(Exception) as slow:
        encode_event(chunk)
    assert type(fast.value) is type(slow.value)
