"""Choosing the next token: a pure function of logits and per-row settings.

Order of operations for each row: ``logit_bias`` is added, presence/frequency penalties are
subtracted (OpenAI's definition, over the tokens generated so far), then the row is decided
greedily (temperature 0) or sampled from ``softmax(logits / temperature)`` restricted to the
``top_p`` nucleus. A row with its own ``torch.Generator`` (a seeded request) draws only from
it, so its tokens do not depend on what else is in the batch.

Reported logprobs are those of the *model's* distribution: ``log_softmax`` of the raw logits,
before temperature, penalties, bias and top_p. This is what the logprobs of a token mean to a
client comparing models, and it does not change with sampling settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kakehashi.engine.params import SamplingParams, TokenLogprob

MAX_TOP_LOGPROBS = 20
MIN_SAMPLING_TEMPERATURE = 1e-4
"""Below this a temperature is greedy: dividing logits by 1e-300 (a temperature the API
accepts) overflows them to infinity and the softmax to NaN."""


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    """Per row: the chosen token, and its logprob entry when the row asked for logprobs."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


def token_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], num_top: Sequence[int]
) -> list[TokenLogprob]:
    """Logprob of ``token_ids[i]`` under row ``i`` of ``logits``, with its ``num_top[i]`` best.

    ``logits`` is (N, V); the top alternatives are sorted by descending logprob.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=logits.device)
    chosen = logprobs.gather(1, ids[:, None])[:, 0].tolist()
    k = min(max(num_top, default=0), MAX_TOP_LOGPROBS, logprobs.shape[-1])
    top_vals: list[list[float]] = []
    top_ids: list[list[int]] = []
    if k > 0:
        vals, idx = torch.topk(logprobs, k, dim=-1)  # sorted descending
        top_vals, top_ids = vals.tolist(), idx.tolist()
    out = []
    for i, token_id in enumerate(token_ids):
        ki = min(num_top[i], k)
        top = tuple(zip(top_ids[i][:ki], top_vals[i][:ki], strict=True)) if ki else ()
        out.append(TokenLogprob(token_id=int(token_id), logprob=chosen[i], top=top))
    return out


def apply_penalties_and_bias(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]],
) -> torch.Tensor:
    """``logits`` (N, V) with each row's logit_bias and penalties applied.

    Without any, ``logits`` itself; otherwise a float32 copy.
    """
    if not any(p.logit_bias or p.presence_penalty or p.frequency_penalty for p in params):
        return logits
    out = logits.to(torch.float32, copy=True)
    vocab = out.shape[-1]
    for i, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor([t for t in p.logit_bias if 0 <= t < vocab], dtype=torch.long)
            vals = torch.tensor(
                [float(v) for t, v in p.logit_bias.items() if 0 <= t < vocab], dtype=out.dtype
            )
            out[i].index_add_(0, ids.to(out.device), vals.to(out.device))
        if (p.presence_penalty or p.frequency_penalty) and output_token_ids[i]:
            generated = torch.tensor(list(output_token_ids[i]), dtype=torch.long)
            counts = torch.bincount(generated, minlength=vocab)[:vocab].to(out)
            out[i] -= counts * p.frequency_penalty + (counts > 0).to(out) * p.presence_penalty
    return out


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of ``probs`` (V,) outside the smallest set with mass >= top_p."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
    # The most likely token is always kept, whatever top_p is.
    drop = mass_before >= top_p
    drop[0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)


def _torch_argmax_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.argmax(x, dim=-1)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    output_token_ids: Sequence[Sequence[int]],
    *,
    argmax_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SamplerOutput:
    """Choose one token per row of ``logits`` (N, V), float32 or bfloat16.

    ``generators[i]`` is row ``i``'s own generator (seeded requests) or None for the global
    one; ``output_token_ids[i]`` are the tokens row ``i`` generated so far (for penalties).
    ``argmax_rows`` decides the greedy rows (the engine passes its kernels'; default torch's).
    """
    n = logits.shape[0]
    if not (len(params) == len(generators) == len(output_token_ids) == n):
        raise ValueError("one params, generator and output list is needed per row")
    processed = apply_penalties_and_bias(logits, params, output_token_ids)
    # Greedy rows are decided together: one argmax and one sync for the whole batch.
    argmax = argmax_rows or _torch_argmax_rows
    chosen: list[int] = argmax(processed).tolist()
    for i, p in enumerate(params):
        if p.temperature < MIN_SAMPLING_TEMPERATURE:
            continue
        probs = torch.softmax(processed[i].float() / p.temperature, dim=-1)
        probs = _top_p_filter(probs, p.top_p)
        if not bool(torch.isfinite(probs).all()):  # keep the greedy choice, never fail
            continue
        token = torch.multinomial(probs, 1, generator=generators[i])
        chosen[i] = int(token)

    wants = [i for i, p in enumerate(params) if p.logprobs is not None]
    logprobs: list[TokenLogprob | None] = [None] * n
    if wants:
        rows = logits[wants]
        entries = token_logprobs(
            rows, [chosen[i] for i in wants], [params[i].logprobs or 0 for i in wants]
        )
        for i, entry in zip(wants, entries, strict=True):
            logprobs[i] = entry
    return SamplerOutput(token_ids=chosen, logprobs=logprobs)
