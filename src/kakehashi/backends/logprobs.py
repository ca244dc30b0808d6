"""The engine's token logprobs in OpenAI's two shapes: chat ``logprobs.content`` entries, and
the legacy API's ``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``."""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from typing import Any

from kakehashi.backends.model import TokenizerLike
from kakehashi.engine.params import GenerationChunk, TokenLogprob
from kakehashi.wire.chat import ChatTokenLogprob, TopLogprob
from kakehashi.wire.completions import CompletionLogprobs

MIN_LOGPROB = -9999.0
"""What OpenAI reports for tokens so unlikely that their logprob is not a finite number."""


def finite(logprob: float) -> float:
    """``logprob``, or :data:`MIN_LOGPROB` in place of ``-inf`` and NaN."""
    return logprob if math.isfinite(logprob) else MIN_LOGPROB


def chat_logprobs(
    tokenizer: TokenizerLike, chunk: GenerationChunk, top: int
) -> list[ChatTokenLogprob]:
    """One chat entry per token of ``chunk``, with up to ``top`` alternatives."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": tokenizer.token_text(token_id),
            "logprob": finite(logprob),
            "bytes": list(tokenizer.token_bytes(token_id)),
        }

    return [
        ChatTokenLogprob(
            **entry(lp.token_id, lp.logprob),
            top_logprobs=[TopLogprob(**entry(t, v)) for t, v in lp.top[:top]],
        )
        for lp in chunk.logprobs or ()
    ]


class TextOffsets:
    """Character offsets of tokens in the text they spell (special tokens add nothing)."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.position = 0

    def advance(self, token_id: int) -> int:
        """The offset of ``token_id``; moves past it."""
        offset = self.position
        if not self._tokenizer.is_special(token_id):
            self.position += len(self._utf8.decode(self._tokenizer.token_bytes(token_id)))
        return offset


def _empty() -> CompletionLogprobs:
    return CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])


class LegacyLogprobs:
    """One legacy choice's logprobs, gathered chunk by chunk. With ``echo`` the prompt's
    tokens come first, scored from the first chunk's ``prompt_logprobs`` (the model's first
    token is not). ``skip`` leaves out that many prompt tokens at the start and the end (the
    tokenizer's BOS): the tokens reported, like their offsets, spell exactly the echoed text.
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        top: int,
        echo: Sequence[int] = (),
        skip: tuple[int, int] = (0, 0),
    ) -> None:
        self._tokenizer = tokenizer
        self._top = top
        self._echo = echo
        self._shown = range(skip[0], len(echo) - skip[1])
        self._offsets = TextOffsets(tokenizer)
        self._pending = _empty()

    def absorb(self, chunk: GenerationChunk) -> None:
        """Add the tokens of ``chunk`` (after the echoed prompt, on the first chunk)."""
        if self._echo:
            prompt_lps = chunk.prompt_logprobs or ()
            for position in self._shown:
                scored = prompt_lps[position] if position < len(prompt_lps) else None
                self._add(self._echo[position], scored)
            self._echo = ()
        for lp in chunk.logprobs or ():
            self._add(lp.token_id, lp)

    def take(self) -> CompletionLogprobs:
        """What was gathered since the last call."""
        pending, self._pending = self._pending, _empty()
        return pending

    def _add(self, token: int, lp: TokenLogprob | None) -> None:
        text = self._tokenizer.token_text
        pending = self._pending
        pending.tokens.append(text(token))
        pending.text_offset.append(self._offsets.advance(token))
        if lp is None:
            pending.token_logprobs.append(None)
            pending.top_logprobs.append(None)
            return
        chosen = finite(lp.logprob)
        pending.token_logprobs.append(chosen)
        tops = {text(t): finite(v) for t, v in lp.top[: self._top]}
        tops.setdefault(text(token), chosen)
        pending.top_logprobs.append(tops)
