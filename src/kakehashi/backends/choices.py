"""The ``n`` choices of a request: one engine run each, the state each has reached, and usage."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

from kakehashi.backends.logprobs import LegacyLogprobs
from kakehashi.backends.model import TokenizerLike
from kakehashi.backends.prompting import Prompt
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import CompletionLogprobs, CompletionRequest


@dataclass(frozen=True, slots=True)
class Run:
    """One engine request: a choice of a prompt."""

    index: int
    prompt_index: int
    prompt: Prompt
    params: SamplingParams
    request_id: str


@dataclass(frozen=True, slots=True)
class Job:
    """All engine requests of one API request."""

    id: str
    created: int
    runs: list[Run]


def new_job(prefix: str, prompts: list[Prompt], n: int, params: SamplingParams) -> Job:
    """One run per (prompt, choice); choice ``i`` of a seeded request uses ``seed + i``."""
    job_id = f"{prefix}-{uuid.uuid4().hex}"
    runs = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            index = p * n + i
            seeded = params if params.seed is None else replace(params, seed=params.seed + i)
            runs.append(Run(index, p, prompt, seeded, f"{job_id}-{index}"))
    return Job(job_id, int(time.time()), runs)


def finish_reason(reason: FinishReason | None) -> Literal["stop", "length"]:
    """OpenAI's name for why a choice ended."""
    return "length" if reason is FinishReason.LENGTH else "stop"


@dataclass(slots=True)
class Choice:
    """What one choice has produced so far. ``echo`` is text the choice starts with (the
    legacy API's echoed prompt); ``logprobs`` gathers legacy logprobs when asked for."""

    run: Run
    echo: str = ""
    logprobs: LegacyLogprobs | None = None
    generated: list[str] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0

    def absorb(self, chunk: GenerationChunk) -> str:
        """Record ``chunk``; returns the text it adds to the choice (after the echo, first)."""
        first = not self.generated
        self.generated.append(chunk.text)
        self.completion_tokens = chunk.completion_tokens
        self.cached_tokens = chunk.cached_tokens
        if chunk.finished:
            self.finish_reason = chunk.finish_reason
        if self.logprobs is not None:
            self.logprobs.absorb(chunk)
        return self.echo + chunk.text if first else chunk.text

    @property
    def text(self) -> str:
        """The whole text so far."""
        return self.echo + "".join(self.generated)

    @property
    def finish(self) -> Literal["stop", "length"]:
        """OpenAI's ``finish_reason`` (meaningful once the choice has finished)."""
        return finish_reason(self.finish_reason)

    def take_logprobs(self) -> CompletionLogprobs | None:
        """Legacy logprobs gathered since the last call (``None`` when not asked for)."""
        return None if self.logprobs is None else self.logprobs.take()


def legacy_choice(run: Run, request: CompletionRequest, tokenizer: TokenizerLike) -> Choice:
    """A legacy completion's choice, with its ``echo`` and ``logprobs`` options."""
    prompt = run.prompt if request.echo else Prompt([], "")
    logprobs = None
    if request.logprobs is not None:
        logprobs = LegacyLogprobs(tokenizer, request.logprobs, echo=prompt.ids, skip=prompt.added)
    return Choice(run, echo=prompt.text, logprobs=logprobs)


def usage(choices: list[Choice]) -> Usage:
    """Prompt tokens count once per prompt; cached tokens are those every choice reused."""
    prompts: dict[int, tuple[int, int]] = {}
    for c in choices:
        size, cached = prompts.get(c.run.prompt_index, (len(c.run.prompt.ids), c.cached_tokens))
        prompts[c.run.prompt_index] = (size, min(cached, c.cached_tokens))
    completion = sum(c.completion_tokens for c in choices)
    return Usage.of(
        sum(size for size, _ in prompts.values()),
        completion,
        cached_tokens=sum(cached for _, cached in prompts.values()),
    )
