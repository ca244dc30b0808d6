"""The local backend: OpenAI requests served by the in-process engine.

This is the one module that sees both the wire shapes and the engine's types. It renders chat
messages with the model's template, tokenizes, checks the context window, maps request
parameters to :class:`SamplingParams`, runs the ``n`` choices concurrently and turns the engine's
chunks back into OpenAI responses, stream chunks, logprobs and usage.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import importlib.metadata
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from kakehashi.backends.base import ServedModel
from kakehashi.backends.streams import merge
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams, TokenLogprob
from kakehashi.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    KakehashiError,
    ServiceUnavailableError,
)
from kakehashi.settings import DEMO_MODEL_ID, Settings
from kakehashi.wire.chat import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
)
from kakehashi.wire.common import Usage
from kakehashi.wire.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)

# OpenAI reports this for tokens so unlikely that their logprob is not a finite number.
_MIN_LOGPROB = -9999.0


class TokenizerLike(Protocol):
    """The part of :class:`kakehashi.engine.tokenizer.Tokenizer` this backend uses."""

    vocab_size: int
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    def token_text(self, token_id: int) -> str: ...
    def is_special(self, token_id: int) -> bool: ...


class EngineLike(Protocol):
    """The part of :class:`kakehashi.engine.async_engine.AsyncEngine` this backend uses."""

    @property
    def tokenizer(self) -> TokenizerLike: ...
    @property
    def max_model_len(self) -> int: ...
    def start(self) -> None: ...
    async def shutdown(self) -> None: ...
    def generate(
        self, request_id: str, prompt_token_ids: Iterable[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]: ...


class TemplateLike(Protocol):
    """The part of :class:`kakehashi.engine.chat_template.ChatTemplate` this backend uses."""

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list | None = None,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """Everything the backend needs once a model is loaded."""

    engine: EngineLike
    chat_template: TemplateLike
    fingerprint: str


def default_model_id(settings: Settings) -> str:
    """The public id of the served model: the configured name, else the directory name (or
    the hub id as given), else the demo id."""
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model is None:
        return DEMO_MODEL_ID
    path = Path(settings.model).expanduser()
    return path.resolve().name if path.is_dir() else settings.model


def fingerprint(model_dir: Path, dtype: str) -> str:
    """A ``system_fingerprint`` that changes when the weights' config, dtype or version do."""
    version = importlib.metadata.version("kakehashi")
    digest = hashlib.sha256(f"{version}|{dtype}|".encode())
    config = model_dir / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return "fp_" + digest.hexdigest()[:10]


def load_local_model(settings: Settings) -> LoadedModel:
    """Resolve, load and wrap the configured model (blocking; seconds to minutes)."""
    # Imported here: loading torch is slow, and only serving needs it.
    from kakehashi.engine.builder import build_async_engine
    from kakehashi.engine.chat_template import ChatTemplate
    from kakehashi.engine.models.loader import resolve_model_source
    from kakehashi.engine.models.tiny import demo_model_dir

    if settings.model is None:
        model_dir = demo_model_dir(settings.data_dir)
    else:
        model_dir = resolve_model_source(settings.model)
    engine = build_async_engine(
        model_dir,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        threads=settings.threads,
        max_num_seqs=settings.max_num_seqs,
    )
    return LoadedModel(
        engine, ChatTemplate.from_dir(model_dir), fingerprint(model_dir, settings.dtype)
    )


@dataclass(frozen=True, slots=True)
class _Prompt:
    ids: list[int]
    text: str  # what ``echo`` returns


@dataclass(frozen=True, slots=True)
class _Run:
    """One engine request: a choice of a prompt."""

    index: int
    prompt_index: int
    prompt: _Prompt
    params: SamplingParams
    request_id: str


@dataclass(frozen=True, slots=True)
class _Job:
    """All engine requests of one API request."""

    id: str
    created: int
    runs: list[_Run]


class _Offsets:
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


@dataclass(slots=True)
class _Choice:
    """What one choice has produced so far."""

    run: _Run
    text: list[str] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0

    def absorb(self, chunk: GenerationChunk) -> None:
        self.text.append(chunk.text)
        self.completion_tokens = chunk.completion_tokens
        self.cached_tokens = chunk.cached_tokens
        if chunk.finished:
            self.finish_reason = chunk.finish_reason


class LocalBackend:
    """Serves one model with the in-process engine under one or more public ids."""

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        *,
        model_ids: Sequence[str],
        owned_by: str = "kakehashi",
    ) -> None:
        self._load = load
        self._created = int(time.time())
        self._served = [ServedModel(m, self._created, owned_by) for m in dict.fromkeys(model_ids)]
        self._model: LoadedModel | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        """The backend for the model ``settings`` describe (loaded on :meth:`start`)."""
        ids = [default_model_id(settings), *settings.aliases]
        return cls(lambda: load_local_model(settings), model_ids=ids)

    # -- lifecycle ---------------------------------------------------------------------------

    def served_models(self) -> Sequence[ServedModel]:
        """The public ids of the model."""
        return self._served

    async def start(self) -> None:
        """Load the model (in a worker thread) and start the engine."""
        if self._model is None:
            model = await asyncio.to_thread(self._load)
            model.engine.start()
            self._model = model

    async def stop(self) -> None:
        """Abort what is running and stop the engine."""
        model, self._model = self._model, None
        if model is not None:
            await model.engine.shutdown()

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; raises 503 before :meth:`start`."""
        if self._model is None:
            raise ServiceUnavailableError("The model is not loaded yet; try again shortly.")
        return self._model

    # -- chat completions --------------------------------------------------------------------

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        """A whole chat completion."""
        job = self._chat_job(request)
        runs = job.runs
        choices = [_Choice(run) for run in runs]
        tokens: list[list[ChatTokenLogprob]] = [[] for _ in runs]
        async with contextlib.aclosing(self._generate(runs)) as events:
            async for index, chunk in events:
                choices[index].absorb(chunk)
                if request.logprobs:
                    tokens[index].extend(self._chat_logprobs(chunk, request.top_logprobs or 0))
        model = self.loaded
        return ChatCompletionResponse(
            id=job.id,
            created=job.created,
            model=request.model,
            choices=[
                ChatChoice(
                    index=c.run.index,
                    message=ChatResponseMessage(content="".join(c.text)),
                    logprobs=ChatChoiceLogprobs(content=tokens[c.run.index])
                    if request.logprobs
                    else None,
                    finish_reason=_finish_reason(c.finish_reason),
                )
                for c in choices
            ],
            usage=_usage(choices),
            system_fingerprint=model.fingerprint,
        )

    async def stream_chat_completion(
        self, request: ChatCompletionRequest
    ) -> AsyncIterator[ChatCompletionChunk]:
        """A chat completion as stream chunks; validation happens before the first one."""
        job = self._chat_job(request)
        runs = job.runs
        choices = [_Choice(run) for run in runs]
        fp = self.loaded.fingerprint
        base: dict[str, Any] = {
            "id": job.id,
            "created": job.created,
            "model": request.model,
            "system_fingerprint": fp,
        }
        if request.include_usage:
            base["usage"] = None

        def chunk_of(*choice: ChatChunkChoice) -> ChatCompletionChunk:
            return ChatCompletionChunk(**base, choices=list(choice))

        for run in runs:
            yield chunk_of(
                ChatChunkChoice(index=run.index, delta=ChatDelta(role="assistant", content=""))
            )
        async with contextlib.aclosing(self._generate(runs)) as events:
            async for index, chunk in events:
                choices[index].absorb(chunk)
                logprobs = None
                if request.logprobs:
                    entries = self._chat_logprobs(chunk, request.top_logprobs or 0)
                    logprobs = ChatChoiceLogprobs(content=entries) if entries else None
                if chunk.text or logprobs is not None:
                    yield chunk_of(
                        ChatChunkChoice(
                            index=index, delta=ChatDelta(content=chunk.text), logprobs=logprobs
                        )
                    )
                if chunk.finished:
                    reason = _finish_reason(chunk.finish_reason)
                    yield chunk_of(
                        ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)
                    )
        if request.include_usage:
            yield ChatCompletionChunk(**{**base, "usage": _usage(choices)}, choices=[])

    def _chat_job(self, request: ChatCompletionRequest) -> _Job:
        model = self.loaded
        tokenizer = model.engine.tokenizer
        messages = [m.template_dict() for m in request.messages]
        text = model.chat_template.render(messages, add_generation_prompt=True, tools=request.tools)
        ids = tokenizer.encode(text)
        max_tokens = self._budget(len(ids), request.completion_limit, "messages")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self._sampling(request, max_tokens=max_tokens, logprobs=logprobs)
        return _job("chatcmpl", [_Prompt(ids, text)], request.n or 1, params)

    def _chat_logprobs(self, chunk: GenerationChunk, top: int) -> list[ChatTokenLogprob]:
        tokenizer = self.loaded.engine.tokenizer

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            return {
                "token": tokenizer.token_text(token_id),
                "logprob": _finite(logprob),
                "bytes": list(tokenizer.token_bytes(token_id)),
            }

        return [
            ChatTokenLogprob(
                **entry(lp.token_id, lp.logprob),
                top_logprobs=[TopLogprob(**entry(t, v)) for t, v in lp.top[:top]],
            )
            for lp in chunk.logprobs or ()
        ]

    # -- legacy completions -----------------------------------------------------------------

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        """A whole legacy completion (one choice per prompt and ``n``)."""
        job = self._completion_job(request)
        runs = job.runs
        legacy = _LegacyChoices(self.loaded.engine.tokenizer, request, runs)
        choices = [_Choice(run) for run in runs]
        async with contextlib.aclosing(self._generate(runs)) as events:
            async for index, chunk in events:
                choices[index].absorb(chunk)
                legacy.absorb(index, chunk)
        return CompletionResponse(
            id=job.id,
            created=job.created,
            model=request.model,
            choices=[
                CompletionChoice(
                    index=c.run.index,
                    text=legacy.full_text(c.run.index, "".join(c.text)),
                    logprobs=legacy.take_logprobs(c.run.index),
                    finish_reason=_finish_reason(c.finish_reason),
                )
                for c in choices
            ],
            usage=_usage(choices),
            system_fingerprint=self.loaded.fingerprint,
        )

    async def stream_completion(
        self, request: CompletionRequest
    ) -> AsyncIterator[CompletionResponse]:
        """A legacy completion as stream chunks (each shaped like a whole response)."""
        job = self._completion_job(request)
        runs = job.runs
        legacy = _LegacyChoices(self.loaded.engine.tokenizer, request, runs)
        choices = [_Choice(run) for run in runs]
        base: dict[str, Any] = {
            "id": job.id,
            "created": job.created,
            "model": request.model,
            "system_fingerprint": self.loaded.fingerprint,
        }
        if request.include_usage:  # as in chat streams: null on every chunk but the last
            base["usage"] = None
        async with contextlib.aclosing(self._generate(runs)) as events:
            async for index, chunk in events:
                choices[index].absorb(chunk)
                first = not legacy.started(index)
                legacy.absorb(index, chunk)
                # The first text of a choice carries the echoed prompt.
                text = legacy.full_text(index, chunk.text) if first else chunk.text
                logprobs = legacy.take_logprobs(index)
                if not (text or chunk.finished or (logprobs and logprobs.tokens)):
                    continue
                reason = _finish_reason(chunk.finish_reason) if chunk.finished else None
                choice = CompletionChoice(
                    index=index, text=text, logprobs=logprobs, finish_reason=reason
                )
                yield CompletionResponse(**base, choices=[choice])
        if request.include_usage:
            yield CompletionResponse(**{**base, "usage": _usage(choices)}, choices=[])

    def _completion_job(self, request: CompletionRequest) -> _Job:
        if request.suffix:
            raise InvalidRequestError("This model does not support `suffix`.", param="suffix")
        n = request.n or 1
        if request.best_of is not None and request.best_of > n:
            raise InvalidRequestError(
                "`best_of` greater than `n` is not supported by this server.", param="best_of"
            )
        tokenizer = self.loaded.engine.tokenizer
        prompts = [self._legacy_prompt(p, tokenizer) for p in request.prompt]
        limit = request.completion_limit
        for prompt in prompts:
            self._budget(len(prompt.ids), limit, "prompt")
        prompt_logprobs = request.logprobs if request.echo else None
        params = self._sampling(
            request,
            max_tokens=limit,  # 0 only scores the prompt (with echo)
            logprobs=request.logprobs,
            prompt_logprobs=prompt_logprobs,
        )
        return _job("cmpl", prompts, n, params)

    @staticmethod
    def _legacy_prompt(prompt: str | list[int], tokenizer: TokenizerLike) -> _Prompt:
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=True)
            if not ids:  # like OpenAI's default prompt, start from the end-of-text token
                ids = [tokenizer.eos_token_ids[-1]]
            return _Prompt(ids, prompt)
        bad = [t for t in prompt if t >= tokenizer.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"Invalid token id {bad[0]} in 'prompt': this model's vocabulary has "
                f"{tokenizer.vocab_size} tokens.",
                param="prompt",
            )
        return _Prompt(list(prompt), tokenizer.decode(prompt))

    # -- shared ------------------------------------------------------------------------------

    def _budget(self, prompt_tokens: int, limit: int | None, param: str) -> int:
        """The completion length to ask for; raises if prompt + completion overflow."""
        window = self.loaded.engine.max_model_len
        noun = "messages" if param == "messages" else "prompt"
        if limit is None:
            if prompt_tokens >= window:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {window} tokens. However, your "
                    f"{noun} resulted in {prompt_tokens} tokens. Please reduce the length of "
                    f"the {noun}.",
                    param=param,
                )
            return window - prompt_tokens
        if prompt_tokens + limit > window:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the {noun}, "
                f"{limit} in the completion). Please reduce the length of the {noun} or "
                "completion.",
                param=param,
            )
        return limit

    def _sampling(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        *,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        vocab = self.loaded.engine.tokenizer.vocab_size
        bias: dict[int, float] = {}
        for key, value in (request.logit_bias or {}).items():
            token = int(key)
            if token >= vocab:
                raise InvalidRequestError(
                    f"Invalid key in 'logit_bias': token id {token} is out of range; this "
                    f"model's vocabulary has {vocab} tokens.",
                    param="logit_bias",
                )
            bias[token] = value
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=bias,
            stop=tuple(s for s in request.stop or () if s),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    async def _generate(self, runs: list[_Run]) -> AsyncIterator[tuple[int, GenerationChunk]]:
        """Run every choice on the engine at once; yields ``(choice index, chunk)``."""
        engine = self.loaded.engine
        streams = [engine.generate(r.request_id, r.prompt.ids, r.params) for r in runs]
        try:
            async with contextlib.aclosing(merge(streams)) as merged:
                async for index, chunk in merged:
                    if chunk.finish_reason is FinishReason.ABORT:
                        raise ServiceUnavailableError(
                            "The request was aborted because the server is shutting down."
                        )
                    yield index, chunk
        except KakehashiError:
            raise
        except ValueError as exc:  # the engine refused the request
            raise InvalidRequestError(str(exc)) from exc


def _job(prefix: str, prompts: list[_Prompt], n: int, params: SamplingParams) -> _Job:
    """One run per (prompt, choice); choice ``i`` of a seeded request uses ``seed + i``."""
    job_id = f"{prefix}-{uuid.uuid4().hex}"
    runs = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            index = p * n + i
            seeded = params if params.seed is None else replace(params, seed=params.seed + i)
            runs.append(_Run(index, p, prompt, seeded, f"{job_id}-{index}"))
    return _Job(job_id, int(time.time()), runs)


def _usage(choices: list[_Choice]) -> Usage:
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


def _finish_reason(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _MIN_LOGPROB


class _LegacyChoices:
    """Per-choice state of the legacy API's ``echo`` and logprobs (tokens, offsets, tops)."""

    def __init__(self, tokenizer: TokenizerLike, request: CompletionRequest, runs: list[_Run]):
        self._tokenizer = tokenizer
        self._top = request.logprobs
        self._echo = bool(request.echo)
        self._runs = runs
        self._offsets = [_Offsets(tokenizer) for _ in runs]
        self._pending: list[CompletionLogprobs | None] = [
            CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
            if self._top is not None
            else None
            for _ in runs
        ]
        self._started = [False] * len(runs)

    def started(self, index: int) -> bool:
        return self._started[index]

    def full_text(self, index: int, generated: str) -> str:
        """The first text of a choice: the echoed prompt, then what was generated."""
        return self._runs[index].prompt.text + generated if self._echo else generated

    def absorb(self, index: int, chunk: GenerationChunk) -> None:
        first = not self._started[index]
        self._started[index] = True
        pending = self._pending[index]
        if pending is None:
            return
        offsets = self._offsets[index]
        if first and self._echo:
            prompt_lps = chunk.prompt_logprobs or ()
            for position, token in enumerate(self._runs[index].prompt.ids):
                lp = prompt_lps[position] if position < len(prompt_lps) else None
                self._add(pending, offsets, token, lp)
        for lp in chunk.logprobs or ():
            self._add(pending, offsets, lp.token_id, lp)

    def take_logprobs(self, index: int) -> CompletionLogprobs | None:
        """The logprobs gathered since the last call (``None`` without ``logprobs``)."""
        pending = self._pending[index]
        if pending is None:
            return None
        self._pending[index] = CompletionLogprobs(
            tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]
        )
        return pending

    def _add(
        self, pending: CompletionLogprobs, offsets: _Offsets, token: int, lp: TokenLogprob | None
    ) -> None:
        text = self._tokenizer.token_text
        pending.tokens.append(text(token))
        pending.text_offset.append(offsets.advance(token))
        if lp is None:
            pending.token_logprobs.append(None)
            pending.top_logprobs.append(None)
            return
        chosen = _finite(lp.logprob)
        pending.token_logprobs.append(chosen)
        tops = {text(t): _finite(v) for t, v in lp.top[: self._top]}
        tops.setdefault(text(token), chosen)
        pending.top_logprobs.append(tops)
