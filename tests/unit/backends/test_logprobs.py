"""logprobs: chat entries and the legacy shape, with offsets and echo."""

from __future__ import annotations

import math

from kakehashi.backends.fake import FakeTokenizer
from kakehashi.backends.logprobs import MIN_LOGPROB, LegacyLogprobs, TextOffsets, chat_logprobs
from kakehashi.engine.params import GenerationChunk, TokenLogprob

TOKENIZER = FakeTokenizer()
HALF = math.log(0.5)


def _chunk(
    *logprobs: TokenLogprob, prompt: tuple[TokenLogprob | None, ...] | None = None
) -> GenerationChunk:
    return GenerationChunk(
        request_id="r",
        token_ids=tuple(lp.token_id for lp in logprobs),
        text="",
        finished=False,
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=len(logprobs),
        logprobs=logprobs,
        prompt_logprobs=prompt,
    )


def test_chat_entries_cut_tops_and_replace_infinities() -> None:
    lp = TokenLogprob(ord("a"), -math.inf, ((ord("a"), HALF), (ord("b"), -1.0), (ord("c"), -2.0)))
    [entry] = chat_logprobs(TOKENIZER, _chunk(lp), top=2)
    assert (entry.token, entry.logprob, entry.bytes) == ("a", MIN_LOGPROB, [97])
    assert [(t.token, t.logprob) for t in entry.top_logprobs] == [("a", HALF), ("b", -1.0)]


def test_offsets_count_characters_not_bytes_and_skip_specials() -> None:
    offsets = TextOffsets(TOKENIZER)
    ids = [FakeTokenizer.BOS, *"éa".encode()]
    assert [offsets.advance(t) for t in ids] == [0, 0, 0, 1]  # é is two bytes, one character
    assert offsets.position == 2


def test_legacy_echo_then_generated_tokens_in_batches() -> None:
    legacy = LegacyLogprobs(TOKENIZER, 1, echo=[FakeTokenizer.BOS, ord("h")])
    scored = TokenLogprob(ord("h"), HALF, ((ord("x"), -0.1),))
    legacy.absorb(_chunk(TokenLogprob(ord("i"), HALF), prompt=(None, scored)))
    first = legacy.take()
    assert first.tokens == ["<|begin|>", "h", "i"]
    assert first.text_offset == [0, 0, 1]
    assert first.token_logprobs == [None, HALF, HALF]
    # The chosen token is always among the tops, even when it was not in the top k.
    assert first.top_logprobs == [None, {"x": -0.1, "h": HALF}, {"i": HALF}]
    legacy.absorb(_chunk(TokenLogprob(ord("!"), HALF)))  # the echo is not repeated
    second = legacy.take()
    assert (second.tokens, second.text_offset) == (["!"], [2])
    assert legacy.take().tokens == []


def test_legacy_echo_leaves_out_the_tokens_the_tokenizer_added() -> None:
    # BOS "a" "b" EOS, where the tokenizer added BOS and EOS around the text "ab".
    echo = [FakeTokenizer.BOS, ord("a"), ord("b"), FakeTokenizer.EOS]
    legacy = LegacyLogprobs(TOKENIZER, 0, echo=echo, skip=(1, 1))
    prompt = (None, TokenLogprob(ord("a"), -1.0), TokenLogprob(ord("b"), -2.0), None)
    legacy.absorb(_chunk(TokenLogprob(ord("c"), HALF), prompt=prompt))
    first = legacy.take()
    # The tokens spell exactly the echoed text and the generated one; the first shown token is
    # scored, since the model read the BOS before it.
    assert "".join(first.tokens) == "abc"
    assert first.text_offset == [0, 1, 2]
    assert first.token_logprobs == [-1.0, -2.0, HALF]
