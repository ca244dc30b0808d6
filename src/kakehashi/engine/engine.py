"""The synchronous engine core: ``add_request / step / abort / has_unfinished``.

Not thread-safe: one thread drives it (see :mod:`kakehashi.engine.async_engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kakehashi.engine.block_manager import BlockManager
from kakehashi.engine.config import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_QUEUE_LEN,
    EngineConfig,
)
from kakehashi.engine.kernels import Kernels
from kakehashi.engine.memory import (
    DEFAULT_KV_CACHE_BYTES,
    PACK_HEADROOM_BYTES,
    default_kv_cache_bytes,
    room_for_packed_weights,
)
from kakehashi.engine.models.base import CausalLM, ModelConfig
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams, TokenLogprob
from kakehashi.engine.runner import ModelRunner, RunnerOutput
from kakehashi.engine.sampler import sample, token_logprobs
from kakehashi.engine.scheduler import ScheduledSequence, Scheduler
from kakehashi.engine.sequence import Sequence
from kakehashi.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from kakehashi.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KV_CACHE_BYTES",
    "DEFAULT_MAX_NUM_BATCHED_TOKENS",
    "DEFAULT_MAX_QUEUE_LEN",
    "PACK_HEADROOM_BYTES",
    "EngineConfig",
    "EngineOverloadedError",
    "EngineStats",
    "LLMEngine",
    "default_kv_cache_bytes",
    "room_for_packed_weights",
]


class StepError(Exception):
    """One engine step failed; ``request_ids`` are the requests it ran, now dropped (the
    cause is the exception's ``__cause__``)."""

    def __init__(self, request_ids: list[str]) -> None:
        super().__init__(f"an engine step failed for {len(request_ids)} request(s)")
        self.request_ids = request_ids


class EngineOverloadedError(ServiceUnavailableError):
    """Every running slot and every place in the queue is taken: the request is refused now
    rather than queued forever."""

    default_code = "engine_overloaded"


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine's load, for health checks and metrics."""

    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_free_blocks: int
    num_cached_blocks: int
    num_preemptions: int
    num_steps: int
    num_batched_tokens: int = 0  # tokens fed to the model since start (prompt and decode)


class LLMEngine:
    """Generates tokens for many requests at once with continuous batching."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer,
        config: EngineConfig,
        kernels: Kernels | None = None,
    ) -> None:
        """``kernels``: what the model runs on (default: resolved from ``config.cpu_kernels``,
        see :meth:`ModelRunner.create`, which also prepares the model and sizes its cache)."""
        if config.max_model_len < 1:
            raise ValueError("max_model_len must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.runner = ModelRunner.create(model, config, kernels)
        self.kernels = self.runner.kernels
        self.kv_cache = self.runner.kv_cache
        self.device = self.runner.device
        self.num_kv_blocks = self.kv_cache.num_blocks
        self.block_manager = BlockManager(
            self.num_kv_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
        )
        self._eos = frozenset(tokenizer.eos_token_ids or model.config.eos_token_ids)
        self._sequences: dict[str, Sequence] = {}
        self._pending: list[GenerationChunk] = []  # final chunks of aborted requests
        self.num_steps = 0  # forward passes run, for metrics and tests
        self.num_batched_tokens = 0  # tokens fed to those forward passes

    # -- public API ------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    def stats(self) -> EngineStats:
        """Current load; cheap, and safe to call from another thread (values may be stale)."""
        scheduler, blocks = self.scheduler, self.block_manager
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_kv_blocks=self.num_kv_blocks,
            num_free_blocks=blocks.num_free_blocks,
            num_cached_blocks=blocks.num_cached_blocks,
            num_preemptions=scheduler.num_preemptions,
            num_steps=self.num_steps,
            num_batched_tokens=self.num_batched_tokens,
        )

    def validate_request(self, prompt_token_ids: Iterable[int], params: SamplingParams) -> None:
        """Raise ValueError if a request can never run. Pure; safe from any thread."""
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError("the prompt must contain at least one token")
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, more than the context window of "
                f"{self.max_model_len}"
            )
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if params.max_tokens < 0:
            raise ValueError("max_tokens must not be negative")

    @property
    def capacity(self) -> int | None:
        """Most requests the engine holds at once: its running slots plus its queue (None:
        no limit)."""
        queue = self.config.max_queue_len
        return None if queue is None else self.config.max_num_seqs + queue

    def check_capacity(self, unfinished: int, count: int = 1) -> None:
        """Raise :class:`EngineOverloadedError` unless ``count`` more requests fit beside
        ``unfinished`` ones (running or waiting). Pure; safe from any thread."""
        capacity = self.capacity
        if capacity is not None and unfinished + count > capacity:
            raise EngineOverloadedError(
                f"The server is overloaded: all {self.config.max_num_seqs} running slots and "
                f"all {self.config.max_queue_len} places in its queue are taken. Please retry "
                "later."
            )

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams,
        *,
        priority: int = 0,
    ) -> None:
        """Queue a request; its chunks come out of later :meth:`step` calls. Lower
        ``priority`` runs first (interactive 0, batch lines 1)."""
        ids = list(prompt_token_ids)
        self.validate_request(ids, params)
        if request_id in self._sequences:
            raise ValueError(f"request {request_id!r} is already running")
        self.check_capacity(self.scheduler.num_unfinished)
        generator = None
        if params.seed is not None:
            # On the model's device: a seeded row samples from logits that live there.
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seq = Sequence(
            request_id,
            ids,
            params,
            detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop),
            generator=generator,
            priority=priority,
        )
        self._sequences[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks; its final ABORT chunk comes from the next step.

        Unknown or already finished requests are ignored.
        """
        seq = self._sequences.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.abort(request_id)
        seq.finish_reason = FinishReason.ABORT
        self._pending.append(self._chunk(seq, (), None, finished=True))

    def has_unfinished(self) -> bool:
        return bool(self._pending) or self.scheduler.has_unfinished()

    def step(self) -> list[GenerationChunk]:
        """Run one batch and return a chunk for every request that produced something."""
        chunks, self._pending = self._pending, []
        plan = self.scheduler.schedule()
        if not plan.scheduled:
            return chunks
        try:
            out = self.runner.run(plan.scheduled)
            self.num_steps += 1
            self.num_batched_tokens += plan.num_batched_tokens
            chunks.extend(self._process(plan.scheduled, out))
        except Exception as exc:
            # Drop only the requests this step ran (their state is unknown now); the rest,
            # and chunks already made, carry on with the next step.
            failed = [s.seq.request_id for s in plan.scheduled]
            for request_id in failed:
                self._drop(request_id)
            self._pending = chunks + self._pending
            raise StepError(failed) from exc
        return chunks

    def _drop(self, request_id: str) -> None:
        """Forget a request and free its blocks, without a final chunk."""
        if self._sequences.pop(request_id, None) is not None:
            self.scheduler.abort(request_id)

    # -- internals -------------------------------------------------------------------------

    def _process(
        self, scheduled: list[ScheduledSequence], out: RunnerOutput
    ) -> list[GenerationChunk]:
        for i, s in enumerate(scheduled):
            s.seq.num_computed_tokens = s.end
            self.block_manager.cache_computed_blocks(s.seq)
            if i in out.prompt_logits:
                self._add_prompt_logprobs(s, out.prompt_logits[i])

        ready = [scheduled[i].seq for i in out.sample_indices]
        # max_tokens=0 (echo with prompt logprobs only): finished once the prompt is computed.
        chunks = [
            self._finish(seq, (), None, FinishReason.LENGTH)
            for seq in ready
            if seq.params.max_tokens == 0
        ]
        keep = [k for k, seq in enumerate(ready) if seq.params.max_tokens > 0]
        if not keep:
            return chunks
        sampling = [ready[k] for k in keep]
        logits = out.sample_logits if len(keep) == len(ready) else out.sample_logits[keep]
        result = sample(
            logits,
            [seq.params for seq in sampling],
            [seq.generator for seq in sampling],
            [seq.output_token_ids for seq in sampling],
            argmax_rows=self.kernels.argmax_rows,
        )
        for seq, token, lp in zip(sampling, result.token_ids, result.logprobs, strict=True):
            chunks.append(self._accept(seq, token, lp))
        return chunks

    def _add_prompt_logprobs(self, s: ScheduledSequence, logits: torch.Tensor) -> None:
        """Logits at position p predict prompt token p + 1."""
        seq = s.seq
        if seq.prompt_logprobs is None:
            return
        first = len(seq.prompt_logprobs)  # next prompt token that lacks a logprob
        positions = [p for p in range(s.start, s.end) if first <= p + 1 < seq.num_prompt_tokens]
        if not positions:
            return
        rows = logits[positions[0] - s.start : positions[-1] - s.start + 1]
        targets = [seq.token_ids[p + 1] for p in positions]
        k = seq.params.prompt_logprobs or 0
        seq.prompt_logprobs.extend(token_logprobs(rows, targets, [k] * len(targets)))

    def _accept(self, seq: Sequence, token: int, lp: TokenLogprob | None) -> GenerationChunk:
        seq.append_token(token)
        params = seq.params
        reason: FinishReason | None = None
        is_eos = not params.ignore_eos and token in self._eos
        stop_token = is_eos or token in params.stop_token_ids
        # A stop token's text is never shown, so it does not go through the detokenizer.
        if stop_token or seq.detokenizer.add(token):
            reason = FinishReason.STOP
        elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        logprobs = None if lp is None else (lp,)
        if reason is not None:
            return self._finish(seq, (token,), logprobs, reason)
        return self._chunk(seq, (token,), logprobs, finished=False)

    def _finish(
        self,
        seq: Sequence,
        token_ids: tuple[int, ...],
        logprobs: tuple[TokenLogprob, ...] | None,
        reason: FinishReason,
    ) -> GenerationChunk:
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self._sequences.pop(seq.request_id, None)
        return self._chunk(seq, token_ids, logprobs, finished=True)

    def _chunk(
        self,
        seq: Sequence,
        token_ids: tuple[int, ...],
        logprobs: tuple[TokenLogprob, ...] | None,
        *,
        finished: bool,
    ) -> GenerationChunk:
        text = seq.detokenizer.take_text()
        if finished:
            text += seq.detokenizer.finish()
        prompt_logprobs = None
        if seq.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            seq.prompt_logprobs_sent = True
            prompt_logprobs = tuple(seq.prompt_logprobs)
        if logprobs is None and seq.params.logprobs is not None:
            logprobs = ()
        return GenerationChunk(
            request_id=seq.request_id,
            token_ids=token_ids,
            text=text,
            finished=finished,
            finish_reason=seq.finish_reason if finished else None,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            cached_tokens=seq.num_cached_tokens or 0,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )
