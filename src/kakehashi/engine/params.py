"""What a request asks of the engine, and what the engine hands back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a sequence stopped generating."""

    STOP = "stop"  # an end-of-sequence token, a stop token or a stop string
    LENGTH = "length"  # max_tokens reached, or the context window is full
    ABORT = "abort"  # the request was cancelled (client went away, shutdown)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request generation settings (already validated by the caller).

    ``logprobs``: ``None`` for no logprobs, ``k >= 0`` for the chosen token's logprob plus the
    ``k`` most likely alternatives. ``prompt_logprobs`` likewise for the prompt tokens (the first
    prompt token has none), needed by the legacy Completions API's ``echo``.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log-probability of one token under the model, with the top alternatives.

    ``top`` is sorted by descending logprob and holds at most the requested number of entries.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """What one request gained in one engine step.

    ``text`` is the newly released text: stop strings are never included, and text that might
    be the start of a stop string (or an incomplete UTF-8 character) is held back until it is
    known not to be. ``token_ids``/``logprobs`` are the tokens sampled in this step (their text may
    be released in a later chunk). ``prompt_logprobs`` appears only in the first chunk of a
    request, and only when asked for.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    def then(self, later: GenerationChunk) -> GenerationChunk:
        """One chunk for this one followed by ``later`` (of the same request): their text,
        tokens and logprobs joined, the state (finished, counts) of ``later``."""
        logprobs = self.logprobs
        if later.logprobs is not None:
            logprobs = later.logprobs if logprobs is None else logprobs + later.logprobs
        return GenerationChunk(
            request_id=self.request_id,
            token_ids=self.token_ids + later.token_ids,
            text=self.text + later.text,
            finished=later.finished,
            finish_reason=later.finish_reason,
            prompt_tokens=later.prompt_tokens,
            completion_tokens=later.completion_tokens,
            cached_tokens=later.cached_tokens,
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs or later.prompt_logprobs,
        )
