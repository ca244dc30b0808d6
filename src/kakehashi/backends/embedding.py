"""The local embedding backend: ``POST /v1/embeddings`` served by an in-process sentence model.

Requests are tokenized, checked against the model's window and vocabulary, then handed to a
:class:`Batcher`: one worker task runs the forward passes in a thread, and requests that arrive
while a pass runs are coalesced into the next one, so a list of 100 inputs, or 100 concurrent
single-input requests, cost one padded forward pass rather than 100.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kakehashi.backends.base import (
    EMBEDDING,
    Call,
    ChatStream,
    CompletionStream,
    ServedModel,
    not_loaded,
    served_as,
    unsupported,
)
from kakehashi.capabilities import Capability
from kakehashi.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from kakehashi.settings import PACKAGED_EMBEDDING_MODEL_ID, Settings
from kakehashi.wire.chat import ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.completions import CompletionRequest, CompletionResponse
from kakehashi.wire.embeddings import (
    MAX_INPUTS,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)

MAX_REQUEST_TOKENS = 300_000
"""Most tokens one request may carry across all inputs, as OpenAI enforces."""


class EmbedderLike(Protocol):
    """The part of :class:`kakehashi.engine.embedding.EmbeddingModel` this backend uses."""

    @property
    def dimensions(self) -> int: ...
    @property
    def max_input_tokens(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]: ...
    def embed(self, batch: Sequence[Sequence[int]]) -> Any: ...


class EmbeddingModelNotFoundError(FileNotFoundError):
    """The configured embedding model directory does not exist."""


def embedding_model_dir(settings: Settings) -> Path | None:
    """The embedding model to serve: the configured directory, else the packaged
    all-MiniLM-L6-v2 if installed, else None (and None when embeddings are disabled)."""
    from kakehashi.engine.packaged_embedding import find_packaged_embedding_model

    if not settings.embeddings:
        return None
    if settings.embedding_model is not None:
        path = Path(settings.embedding_model).expanduser()
        if not (path / "config.json").is_file():
            raise EmbeddingModelNotFoundError(f"{path} is not an embedding model directory")
        return path
    return find_packaged_embedding_model()


def load_embedding_model(model_dir: Path, device: str = "cpu") -> EmbedderLike:
    """Load a sentence-transformers style model directory onto ``device`` (``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``; blocking, a second or two)."""
    from kakehashi.engine.builder import resolve_device
    from kakehashi.engine.embedding import EmbeddingModel

    return EmbeddingModel.from_dir(model_dir, device=str(resolve_device(device)))


@dataclass(slots=True)
class _Job:
    inputs: list[list[int]]
    future: asyncio.Future[list[Any]]


def _fail(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


class Batcher:
    """Coalesces concurrent embedding calls into as few forward passes as possible.

    ``embed`` takes a list of token-id lists and returns one row per list (anything
    indexable); it runs in a worker thread, one pass at a time.
    """

    def __init__(self, embed: Callable[[list[list[int]]], Any], *, max_inputs: int) -> None:
        self._embed = embed
        self._max_inputs = max_inputs
        self._jobs: deque[_Job] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def start(self) -> None:
        """Start the worker task (on the running loop)."""
        self._task = asyncio.create_task(self._run(), name="kakehashi-embedding-batcher")

    async def stop(self) -> None:
        """Stop the worker; calls still waiting fail with 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        _fail(list(self._jobs), ServiceUnavailableError("The server is shutting down."))
        self._jobs.clear()

    async def submit(self, inputs: list[list[int]]) -> list[Any]:
        """The rows of ``inputs``, computed together with whatever else is waiting."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(inputs, future))
        self._ready.set()
        return await future

    def _take(self) -> list[_Job]:
        """Waiting jobs for one pass: at least one, more while they fit ``max_inputs``."""
        jobs: list[_Job] = []
        count = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # the caller went away
                self._jobs.popleft()
                continue
            if jobs and count + len(job.inputs) > self._max_inputs:
                break
            jobs.append(self._jobs.popleft())
            count += len(job.inputs)
        return jobs

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while jobs := self._take():
                batch = [ids for job in jobs for ids in job.inputs]
                try:
                    rows = await asyncio.to_thread(self._embed, batch)
                except asyncio.CancelledError:
                    _fail(jobs, ServiceUnavailableError("The server is shutting down."))
                    raise
                except Exception as exc:
                    _fail(jobs, exc)
                    continue
                self.passes += 1
                start = 0
                for job in jobs:
                    end = start + len(job.inputs)
                    if not job.future.done():
                        job.future.set_result([rows[i] for i in range(start, end)])
                    start = end


class LocalEmbeddingBackend:
    """Serves one sentence-embedding model under one or more public ids."""

    def __init__(
        self,
        load: Callable[[], EmbedderLike],
        *,
        model_ids: Sequence[str],
        owned_by: str = "kakehashi",
    ) -> None:
        self._load = load
        self._served = served_as(model_ids, owned_by=owned_by, capabilities=EMBEDDING)
        self._model: EmbedderLike | None = None
        self._batcher: Batcher | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEmbeddingBackend | None:
        """The backend for the configured (or packaged) embedding model, or None if there is
        none to serve. Raises :class:`EmbeddingModelNotFoundError` for a missing directory."""
        model_dir = embedding_model_dir(settings)
        if model_dir is None:
            return None
        name = settings.embedding_model_name
        if name is None:
            packaged = settings.embedding_model is None
            name = PACKAGED_EMBEDDING_MODEL_ID if packaged else model_dir.resolve().name
        return cls(
            lambda: load_embedding_model(model_dir, settings.device),
            model_ids=[name, *settings.embedding_aliases],
        )

    @property
    def name(self) -> str:
        """``local-embeddings``."""
        return "local-embeddings"

    def served_models(self) -> Sequence[ServedModel]:
        """The public ids of the model."""
        return self._served

    async def start(self) -> None:
        """Load the model in a worker thread and start the batcher."""
        if self._model is None:
            model = await asyncio.to_thread(self._load)
            self._batcher = Batcher(model.embed, max_inputs=MAX_INPUTS)
            self._batcher.start()
            self._model = model

    async def stop(self) -> None:
        """Stop the batcher (pending requests get 503)."""
        batcher, self._batcher, self._model = self._batcher, None, None
        if batcher is not None:
            await batcher.stop()

    @property
    def batcher(self) -> Batcher:
        """The running batcher; raises 503 before :meth:`start`."""
        if self._batcher is None:
            raise not_loaded()
        return self._batcher

    @property
    def model(self) -> EmbedderLike:
        """The loaded model; raises 503 before :meth:`start`."""
        if self._model is None:
            raise not_loaded()
        return self._model

    async def chat(self, request: ChatCompletionRequest, call: Call) -> ChatCompletionResponse:
        """An embedding model does not chat."""
        raise unsupported(Capability.CHAT, request.model)

    def stream_chat(self, request: ChatCompletionRequest, call: Call) -> ChatStream:
        """An embedding model does not chat."""
        raise unsupported(Capability.CHAT, request.model)

    async def completion(self, request: CompletionRequest, call: Call) -> CompletionResponse:
        """An embedding model does not complete text."""
        raise unsupported(Capability.COMPLETIONS, request.model)

    def stream_completion(self, request: CompletionRequest, call: Call) -> CompletionStream:
        """An embedding model does not complete text."""
        raise unsupported(Capability.COMPLETIONS, request.model)

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> EmbeddingResponse:
        """Embed every input; ``request.dimensions`` (already allowed by the gateway) cuts
        each vector to that length and renormalizes it, as text-embedding-3 does."""
        model = self.model
        dimensions = request.dimensions
        if dimensions is not None and dimensions > model.dimensions:
            raise InvalidRequestError(
                f"Invalid 'dimensions': this model's embeddings have {model.dimensions} "
                f"dimensions, so at most {model.dimensions} can be requested, but got "
                f"{dimensions}.",
                param="dimensions",
            )
        inputs = await self._token_ids(model, request.input)
        rows = await self.batcher.submit(inputs)
        data = [
            Embedding(index=i, embedding=_encode(row, dimensions, request.base64))
            for i, row in enumerate(rows)
        ]
        tokens = sum(len(ids) for ids in inputs)
        call.prompt_tokens = tokens
        return EmbeddingResponse(
            data=data,
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @staticmethod
    async def _token_ids(model: EmbedderLike, inputs: list[str | list[int]]) -> list[list[int]]:
        """Token ids of every input, refusing over-long inputs and unknown ids."""
        texts = [item for item in inputs if isinstance(item, str)]
        encoded = iter(await asyncio.to_thread(model.tokenize, texts, truncate=False))
        ids = [next(encoded) if isinstance(item, str) else item for item in inputs]
        limit = model.max_input_tokens
        for index, tokens in enumerate(ids):
            if len(tokens) > limit:
                raise ContextLengthExceededError(
                    f"Invalid 'input': input {index} has {len(tokens)} tokens, but this model's "
                    f"maximum input length is {limit} tokens. Please reduce the length of the "
                    "input.",
                    param="input",
                )
            if tokens and max(tokens) >= model.vocab_size:
                raise InvalidRequestError(
                    f"Invalid 'input': input {index} has token id {max(tokens)}, but this "
                    f"model's vocabulary has {model.vocab_size} tokens.",
                    param="input",
                )
        total = sum(len(tokens) for tokens in ids)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidRequestError(
                f"Invalid 'input': the inputs have {total} tokens in all, but a request may "
                f"have at most {MAX_REQUEST_TOKENS}.",
                param="input",
            )
        return ids


def _encode(row: Any, dimensions: int | None, as_base64: bool) -> list[float] | str:
    """A vector (a 1-D float32 tensor) as floats or base64 of little-endian float32."""
    if dimensions is not None:
        row = row[:dimensions]
        row = row / row.norm().clamp_min(1e-12)
    if as_base64:
        return base64.b64encode(row.numpy().astype("<f4", copy=False).tobytes()).decode("ascii")
    return row.tolist()
