"""How an engine batches and how big its KV cache is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kakehashi.engine.memory import default_kv_cache_bytes

DEFAULT_MAX_QUEUE_LEN = 256
# Tokens of one step. On CPUs a step of 1024 prompt tokens stalls every running stream for
# up to a second (Qwen2.5-0.5B, 2 cores); 256 cut the longest step 3-4x at the same TTFT.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 256


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine batches and how big its KV cache is.

    The KV pool is ``num_kv_blocks`` blocks if given, else as many as ``kv_cache_bytes`` holds,
    else enough for ``max_num_seqs`` sequences of ``max_model_len`` tokens capped by
    :func:`default_kv_cache_bytes`. It always holds at least one full-length sequence.
    ``max_num_batched_tokens`` bounds the tokens of one step (long prompts are prefilled in
    chunks of at most that, mixed with the decodes of running requests). At most
    ``max_queue_len`` requests wait once ``max_num_seqs`` run (None: no limit; 0: none wait);
    beyond those :class:`~kakehashi.engine.engine.EngineOverloadedError` is raised.
    ``prepack_weights`` lets the model keep matmul-friendly copies of its weights (faster,
    more memory); ``cpu_kernels`` lets it use :mod:`kakehashi.engine.kernels` where they run.
    """

    max_model_len: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_bytes: int | None = None
    enable_prefix_caching: bool = True
    max_queue_len: int | None = DEFAULT_MAX_QUEUE_LEN
    prepack_weights: bool = True
    cpu_kernels: bool = True

    def resolve_num_blocks(self, bytes_per_block: int, device: torch.device | None = None) -> int:
        """The number of KV blocks this config asks for, given the size of one block and the
        device the cache lives on."""
        per_seq = -(-self.max_model_len // self.block_size)
        if self.num_kv_blocks is not None:
            wanted = self.num_kv_blocks
        elif self.kv_cache_bytes is not None:
            wanted = self.kv_cache_bytes // bytes_per_block
        else:
            budget = default_kv_cache_bytes(device)
            wanted = min(self.max_num_seqs * per_seq, budget // bytes_per_block)
        return max(wanted, per_seq)
