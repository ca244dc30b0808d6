"""Runs one scheduled step through the model: packs the batch, returns the logits needed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kakehashi.engine.config import EngineConfig
from kakehashi.engine.kernels import TORCH_KERNELS, Kernels, resolve_kernels
from kakehashi.engine.kv_cache import KVCache, PagedAttentionContext, SequenceSlice
from kakehashi.engine.memory import model_device, model_dtype, packed_copy_fits
from kakehashi.engine.models.base import CausalLM
from kakehashi.engine.scheduler import ScheduledSequence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunnerOutput:
    """Logits of one step, in the model's dtype (the sampler widens what it must).

    ``sample_logits`` (N, V) has one row per scheduled sequence that samples a token, in
    schedule order (``sample_indices`` are their positions in the schedule).
    ``prompt_logits`` maps a schedule position to the (num_new, V) logits of every fed token,
    for sequences that still need prompt logprobs.
    """

    sample_logits: torch.Tensor
    sample_indices: list[int]
    prompt_logits: dict[int, torch.Tensor]


class ModelRunner:
    """Owns the model, the kernels it runs on and its KV cache; turns a schedule into logits."""

    def __init__(
        self, model: CausalLM, kv_cache: KVCache, kernels: Kernels = TORCH_KERNELS
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.kernels = kernels
        self.device = kv_cache.keys[0].device if kv_cache.keys else torch.device("cpu")

    @classmethod
    def create(
        cls, model: CausalLM, config: EngineConfig, kernels: Kernels | None = None
    ) -> ModelRunner:
        """Prepare ``model`` to run on ``kernels`` (by default resolved from
        ``config.cpu_kernels`` for the model's dtype and device) and give it a KV cache sized
        as ``config`` says. Packed weight copies are kept only on a CPU, only where
        ``config.prepack_weights`` allows and free memory holds them."""
        device, dtype = model_device(model), model_dtype(model)
        if kernels is None:
            kernels = resolve_kernels(config.cpu_kernels, device=device, dtype=dtype)
        pack = device.type == "cpu" and config.prepack_weights and packed_copy_fits(model)
        model.use_kernels(kernels, pack=pack)
        if kernels.bf16:
            batches = "AMX" if pack and kernels.amx else "oneDNN" if pack else "torch"
            log.info(
                "CPU kernels on: AVX-512 BF16 decode (one sequence), %s (decode batches), "
                "paged decode attention",
                batches,
            )
        mc = model.config
        per_block = KVCache.bytes_per_block(
            num_layers=mc.num_layers,
            block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
            dtype=dtype,
        )
        kv_cache = KVCache(
            num_layers=mc.num_layers,
            num_blocks=config.resolve_num_blocks(per_block, device),
            block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
            dtype=dtype,
            device=device,
            cpu_kernels=kernels.bf16,
            amx=kernels.amx,
        )
        return cls(model, kv_cache, kernels)

    def run(self, scheduled: Sequence[ScheduledSequence]) -> RunnerOutput:
        bs = self.kv_cache.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        new_slots: list[int] = []
        slices: list[SequenceSlice] = []
        # Packed rows whose hidden states become logits, and what each one is for.
        wanted_rows: list[int] = []
        sample_indices: list[int] = []
        sample_rows: list[int] = []  # index into wanted_rows of each sampling sequence
        prompt_spans: dict[int, tuple[int, int]] = {}
        for i, s in enumerate(scheduled):
            seq = s.seq
            query_start = len(input_ids)
            input_ids.extend(seq.token_ids[s.start : s.end])
            positions.extend(range(s.start, s.end))
            table = seq.block_table
            new_slots.extend(table[p // bs] * bs + p % bs for p in range(s.start, s.end))
            num_blocks = -(-s.end // bs)
            block_ids = torch.tensor(
                seq.block_table[:num_blocks], dtype=torch.long, device=self.device
            )
            slices.append(SequenceSlice(query_start, s.num_tokens, s.end, block_ids))
            if seq.needs_prompt_logprobs:
                prompt_spans[i] = (len(wanted_rows), s.num_tokens)
                wanted_rows.extend(range(query_start, query_start + s.num_tokens))
            if s.samples:
                sample_indices.append(i)
                if i not in prompt_spans:
                    wanted_rows.append(query_start + s.num_tokens - 1)
                sample_rows.append(len(wanted_rows) - 1)

        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        slots = torch.tensor(new_slots, dtype=torch.long, device=self.device)
        ctx = PagedAttentionContext(self.kv_cache, slots, slices)
        with torch.inference_mode():
            hidden = self.model.forward(ids, pos, ctx)  # (T, hidden)
            if wanted_rows != list(range(len(input_ids))):
                hidden = hidden[torch.tensor(wanted_rows, dtype=torch.long, device=self.device)]
            logits = self.model.compute_logits(hidden)  # (N, V)

        prompt_logits = {i: logits[a : a + n] for i, (a, n) in prompt_spans.items()}
        if sample_rows != list(range(logits.shape[0])):
            logits = logits[torch.tensor(sample_rows, dtype=torch.long, device=self.device)]
        sample_logits = logits
        return RunnerOutput(sample_logits, sample_indices, prompt_logits)
