"""One request's state inside the engine: a single object with a status enum."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from kakehashi.engine.params import FinishReason, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    import torch


class SequenceStatus(Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"  # queued for (re)admission; holds no KV blocks
    RUNNING = "running"  # admitted: holds KV blocks, prefilling or decoding
    FINISHED = "finished"  # done (stopped, length, aborted); blocks freed


class Sequence:
    """A request being generated: prompt + output token ids and their KV bookkeeping.

    ``token_ids`` holds the prompt followed by every generated token. ``num_computed_tokens``
    counts the leading tokens whose keys/values are in the KV cache; the scheduler feeds the
    rest. ``block_table`` lists the KV block ids that hold token ``i`` at block ``i //
    block_size``. ``block_hashes`` are the prefix hashes of the leading full, computed blocks.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams,
        *,
        detokenizer: Any = None,
        generator: torch.Generator | None = None,
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        # Lower runs first: interactive requests are 0, batch lines 1 (see Scheduler).
        self.priority = priority
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.params = params
        self.detokenizer = detokenizer
        self.generator = generator
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        # Hashes of the full prompt blocks this sequence is computing (see BlockManager).
        self.in_flight_hashes: list[int] = []
        self.num_computed_tokens = 0
        # Prompt tokens found in the prefix cache at first admission (reported to the client).
        self.num_cached_tokens: int | None = None
        # Prompt logprobs gathered so far, one per prompt token (the first is None).
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            None if params.prompt_logprobs is None else [None]
        )
        self.prompt_logprobs_sent = False
        self.num_preemptions = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def needs_prompt_logprobs(self) -> bool:
        """True while some prompt tokens still lack their logprob."""
        pl = self.prompt_logprobs
        return pl is not None and len(pl) < self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, status={self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens})"
        )
