"""The local backend: OpenAI requests served by the in-process engine.

:class:`LocalBackend` orchestrates small steps that live in their own modules:
:mod:`~kakehashi.backends.prompting` turns a request into prompt token ids and
:class:`SamplingParams`, :mod:`~kakehashi.backends.choices` runs and tracks the ``n`` choices,
and :mod:`~kakehashi.backends.logprobs` renders logprobs in OpenAI's shapes. The model, its
protocols and its loading live in :mod:`~kakehashi.backends.model` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from kakehashi.backends.base import (
    Call,
    ChatStream,
    CompletionStream,
    ServedModel,
    StreamUsage,
    not_loaded,
    served_as,
    unsupported,
)
from kakehashi.backends.choices import Choice, Job, Run, legacy_choice, new_job, usage
from kakehashi.backends.local_features import refuse_unsupported_chat
from kakehashi.backends.logprobs import chat_logprobs
from kakehashi.backends.model import (
    ChunkStream,
    EngineLike,
    LoadedModel,
    TemplateLike,
    TokenizerLike,
    default_model_id,
    fingerprint,
    load_local_model,
)
from kakehashi.backends.prompting import (
    chat_prompt,
    check_legacy_options,
    check_prompt_chars,
    check_token_ids,
    completion_budget,
    legacy_prompt,
    messages_prompt,
    sampling_params,
)
from kakehashi.backends.streams import close_all, closing_all, merge
from kakehashi.capabilities import Capability
from kakehashi.engine.params import FinishReason, GenerationChunk
from kakehashi.errors import InvalidRequestError, KakehashiError, ServiceUnavailableError
from kakehashi.settings import Settings
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
)
from kakehashi.wire.completions import CompletionChoice, CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import EmbeddingRequest, EmbeddingResponse
from kakehashi.wire.tokenize import TokenizeRequest

if TYPE_CHECKING:
    from kakehashi.engine.models.checkpoint import Checkpoint

__all__ = [
    "EngineLike",
    "LoadedModel",
    "LocalBackend",
    "TemplateLike",
    "TokenizerLike",
    "default_model_id",
    "fingerprint",
    "load_local_model",
]


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
        self._served = served_as(model_ids, owned_by=owned_by)
        self._model: LoadedModel | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, checkpoint: Checkpoint | None = None
    ) -> LocalBackend:
        """The backend for the model ``settings`` describe, or for ``checkpoint`` if its files
        are already open (loaded on :meth:`start`)."""
        ids = [default_model_id(settings), *settings.aliases]
        return cls(lambda: load_local_model(settings, checkpoint), model_ids=ids)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``local``."""
        return "local"

    def served_models(self) -> Sequence[ServedModel]:
        """The public ids of the model."""
        return self._served

    async def start(self) -> None:
        """Load the model (in a worker thread) and start the engine."""
        if self._model is None:
            model = await asyncio.to_thread(self._load)
            # The model, tokenizer and template live as long as the server: keep the garbage
            # collector's full passes (which the chunks of many streams trigger) off them.
            gc.collect()
            gc.freeze()
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
            raise not_loaded()
        return self._model

    # -- tokens ------------------------------------------------------------------------------

    @property
    def context_window(self) -> int | None:
        """The engine's context window, once the model is loaded."""
        return self._model.engine.max_model_len if self._model is not None else None

    def tokenize(self, request: TokenizeRequest) -> list[int]:
        """The prompt's ids, or the messages' as a chat completion would count them."""
        model = self.loaded
        tokenizer = model.engine.tokenizer
        if request.messages is not None:
            prompt = messages_prompt(
                request.messages,
                model.chat_template,
                tokenizer,
                tools=request.tools,
                add_generation_prompt=request.add_generation_prompt,
            )
            if request.add_special_tokens:  # the template wrote them; vLLM adds them again
                return tokenizer.encode(prompt.text, add_special_tokens=True)
            return prompt.ids
        special = True if request.add_special_tokens is None else request.add_special_tokens
        return tokenizer.encode(request.prompt or "", add_special_tokens=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (special tokens included, as vLLM gives them)."""
        tokenizer = self.loaded.engine.tokenizer
        check_token_ids(tokens, tokenizer, "tokens")
        return tokenizer.decode(tokens, skip_special_tokens=False)

    # -- chat completions --------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        """A whole chat completion."""
        job = await self._chat_job(request)
        choices = [Choice(run) for run in job.runs]
        tokens: list[list[ChatTokenLogprob]] = [[] for _ in choices]
        async with (
            closing_all(await self._start(job, call)) as streams,
            contextlib.aclosing(self._generate(job, streams, call)) as events,
        ):
            async for index, chunk in events:
                choices[index].absorb(chunk)
                if request.logprobs:
                    tokens[index].extend(self._chat_logprobs(request, chunk))
        return ChatCompletionResponse(
            **self._header(job, request),
            choices=[
                ChatChoice(
                    index=c.run.index,
                    message=ChatResponseMessage(content=c.text),
                    logprobs=ChatChoiceLogprobs(content=tokens[c.run.index])
                    if request.logprobs
                    else None,
                    finish_reason=c.finish,
                )
                for c in choices
            ],
            usage=usage(choices),
        )

    async def stream_chat(self, request: ChatCompletionRequest, call: Call) -> ChatStream:
        """A chat completion as stream chunks; validation and admission happen before the
        first one."""
        job = await self._chat_job(request)
        choices = [Choice(run) for run in job.runs]
        header = self._header(job, request)

        def chunk_of(*choice: ChatChunkChoice) -> ChatCompletionChunk:
            return ChatCompletionChunk(**header, choices=list(choice))

        # Admitted before the first chunk: an overload is a 503, never a frame of a 200 stream.
        async with (
            closing_all(await self._start(job, call)) as streams,
            contextlib.aclosing(self._generate(job, streams, call)) as events,
        ):
            for run in job.runs:
                yield chunk_of(
                    ChatChunkChoice(index=run.index, delta=ChatDelta(role="assistant", content=""))
                )
            async for index, chunk in events:
                choice = choices[index]
                text = choice.absorb(chunk)
                logprobs = None
                if request.logprobs:
                    entries = self._chat_logprobs(request, chunk)
                    logprobs = ChatChoiceLogprobs(content=entries) if entries else None
                if text or logprobs is not None:
                    delta = ChatDelta(content=text)
                    yield chunk_of(ChatChunkChoice(index=index, delta=delta, logprobs=logprobs))
                if chunk.finished:
                    yield chunk_of(
                        ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=choice.finish)
                    )
        yield StreamUsage(usage(choices))

    async def _chat_job(self, request: ChatCompletionRequest) -> Job:
        refuse_unsupported_chat(request)
        model = self.loaded
        tokenizer = model.engine.tokenizer
        window = model.engine.max_model_len
        chars = sum(len(m.text or "") for m in request.messages)
        check_prompt_chars(chars, tokenizer, window, "messages")
        # Templating and tokenizing take long for long prompts: not on the event loop.
        prompt = await asyncio.to_thread(chat_prompt, request, model.chat_template, tokenizer)
        max_tokens = completion_budget(
            len(prompt.ids), request.completion_limit, window, "messages"
        )
        params = sampling_params(
            request,
            vocab_size=tokenizer.vocab_size,
            max_tokens=max_tokens,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )
        return new_job("chatcmpl", [prompt], request.n or 1, params)

    def _chat_logprobs(
        self, request: ChatCompletionRequest, chunk: GenerationChunk
    ) -> list[ChatTokenLogprob]:
        return chat_logprobs(self.loaded.engine.tokenizer, chunk, request.top_logprobs or 0)

    # -- legacy completions -----------------------------------------------------------------

    async def completion(self, request: CompletionRequest, call: Call) -> CompletionResponse:
        """A whole legacy completion (one choice per prompt and ``n``)."""
        job = await self._completion_job(request)
        choices = self._legacy_choices(request, job.runs)
        async with (
            closing_all(await self._start(job, call)) as streams,
            contextlib.aclosing(self._generate(job, streams, call)) as events,
        ):
            async for index, chunk in events:
                choices[index].absorb(chunk)
        return CompletionResponse(
            **self._header(job, request),
            choices=[
                CompletionChoice(
                    index=c.run.index,
                    text=c.text,
                    logprobs=c.take_logprobs(),
                    finish_reason=c.finish,
                )
                for c in choices
            ],
            usage=usage(choices),
        )

    async def stream_completion(self, request: CompletionRequest, call: Call) -> CompletionStream:
        """A legacy completion as stream chunks (each shaped like a whole response)."""
        job = await self._completion_job(request)
        choices = self._legacy_choices(request, job.runs)
        header = self._header(job, request)
        async with (
            closing_all(await self._start(job, call)) as streams,
            contextlib.aclosing(self._generate(job, streams, call)) as events,
        ):
            async for index, chunk in events:
                choice = choices[index]
                text = choice.absorb(chunk)
                logprobs = choice.take_logprobs()
                if not (text or chunk.finished or (logprobs and logprobs.tokens)):
                    continue
                yield CompletionResponse(
                    **header,
                    choices=[
                        CompletionChoice(
                            index=index,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=choice.finish if chunk.finished else None,
                        )
                    ],
                )
        yield StreamUsage(usage(choices))

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> EmbeddingResponse:
        """A language model does not embed."""
        raise unsupported(Capability.EMBEDDINGS, request.model)

    async def _completion_job(self, request: CompletionRequest) -> Job:
        check_legacy_options(request)
        engine = self.loaded.engine
        tokenizer = engine.tokenizer
        for text in request.prompt:
            if isinstance(text, str):
                check_prompt_chars(len(text), tokenizer, engine.max_model_len, "prompt")
        prompts = await asyncio.to_thread(
            lambda: [legacy_prompt(p, tokenizer) for p in request.prompt]
        )
        limit = request.completion_limit
        for prompt in prompts:
            completion_budget(len(prompt.ids), limit, engine.max_model_len, "prompt")
        params = sampling_params(
            request,
            vocab_size=tokenizer.vocab_size,
            max_tokens=limit,  # 0 only scores the prompt (with echo)
            logprobs=request.logprobs,
            prompt_logprobs=request.logprobs if request.echo else None,
        )
        return new_job("cmpl", prompts, request.n or 1, params)

    def _legacy_choices(self, request: CompletionRequest, runs: list[Run]) -> list[Choice]:
        tokenizer = self.loaded.engine.tokenizer
        return [legacy_choice(run, request, tokenizer) for run in runs]

    # -- shared ------------------------------------------------------------------------------

    def _header(
        self, job: Job, request: ChatCompletionRequest | CompletionRequest
    ) -> dict[str, Any]:
        """The fields every response and stream chunk of ``job`` repeats."""
        return {
            "id": job.id,
            "created": job.created,
            "model": request.model,
            "system_fingerprint": self.loaded.fingerprint,
        }

    async def _start(self, job: Job, call: Call) -> list[ChunkStream]:
        """Admit every choice of ``job`` on the engine now at ``call``'s priority, or none
        (503 when the running slots and the queue are full); the caller closes the streams."""
        engine = self.loaded.engine
        engine.check_admission(len(job.runs))
        streams: list[ChunkStream] = []
        try:
            for run in job.runs:
                streams.append(
                    engine.generate(
                        run.request_id, run.prompt.ids, run.params, priority=call.priority
                    )
                )
        except ValueError as exc:  # the engine refused the request
            await close_all(streams)
            raise InvalidRequestError(str(exc)) from exc
        except BaseException:
            await close_all(streams)
            raise
        return streams

    async def _generate(
        self, job: Job, streams: list[ChunkStream], call: Call
    ) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """Run every choice at once; yields ``(choice index, chunk)`` and keeps ``call``'s
        token counts up to date."""
        runs = job.runs
        call.prompt_tokens = sum({r.prompt_index: len(r.prompt.ids) for r in runs}.values())
        done = [0] * len(runs)
        try:
            async with contextlib.aclosing(merge(streams)) as merged:
                async for index, chunk in merged:
                    call.completion_tokens += chunk.completion_tokens - done[index]
                    done[index] = chunk.completion_tokens
                    if chunk.finish_reason is FinishReason.ABORT:
                        raise ServiceUnavailableError(
                            "The request was aborted because the server is shutting down."
                        )
                    yield index, chunk
        except KakehashiError:
            raise
        except ValueError as exc:  # the engine refused the request
            raise InvalidRequestError(str(exc)) from exc
