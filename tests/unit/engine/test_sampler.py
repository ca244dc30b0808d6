"""Sampler: greedy, seeds, top_p, penalties, logit_bias, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from kakehashi.engine.params import SamplingParams
from kakehashi.engine.sampler import apply_penalties_and_bias, sample, token_logprobs

V = 50


def logits_rows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def run(logits, params, generators=None, outputs=None):
    n = logits.shape[0]
    return sample(logits, params, generators or [None] * n, outputs or [[] for _ in range(n)])


def test_greedy_picks_argmax():
    logits = logits_rows(4)
    out = run(logits, [SamplingParams(temperature=0.0)] * 4)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 4


def test_seeded_rows_are_reproducible_and_batch_independent():
    logits = logits_rows(6, seed=1)
    params = SamplingParams(temperature=1.5, seed=42)

    def draw(rows: torch.Tensor, count: int) -> list[int]:
        n = rows.shape[0]
        gens = [torch.Generator().manual_seed(42) if i == 0 else None for i in range(n)]
        ps = [params] + [SamplingParams(temperature=1.0)] * (n - 1)
        tokens = []
        for _ in range(count):
            tokens.append(run(rows, ps, gens).token_ids[0])
        return tokens

    alone = draw(logits[:1], 20)
    assert draw(logits[:1], 20) == alone
    torch.manual_seed(123)
    batched = draw(logits, 20)  # other rows draw from the global generator meanwhile
    assert batched == alone
    assert len(set(alone)) > 1  # it really samples


def test_top_p_keeps_only_the_nucleus():
    logits = torch.full((1, V), -10.0)
    logits[0, 3] = 5.0  # ~0.73 of the mass after the next two
    logits[0, 7] = 4.0
    logits[0, 9] = 3.0
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        seen.add(run(logits, [SamplingParams(top_p=0.8)], [gen]).token_ids[0])
    assert seen == {3, 7}
    seen_tiny = {run(logits, [SamplingParams(top_p=0.01)], [gen]).token_ids[0] for _ in range(50)}
    assert seen_tiny == {3}


def test_logit_bias_changes_the_choice():
    logits = logits_rows(1)
    weakest = int(logits[0].argmin())
    out = run(logits, [SamplingParams(temperature=0.0, logit_bias={weakest: 100.0})])
    assert out.token_ids == [weakest]
    banned = int(logits[0].argmax())
    out = run(logits, [SamplingParams(temperature=0.0, logit_bias={banned: -100.0})])
    assert out.token_ids[0] != banned


def test_penalties_follow_the_openai_definition():
    logits = torch.zeros(1, V)
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)]
    out = apply_penalties_and_bias(logits, params, [[4, 4, 4, 9]])
    assert out[0, 4].item() == -(3 * 0.25 + 0.5)
    assert out[0, 9].item() == -(1 * 0.25 + 0.5)
    assert out[0, 0].item() == 0.0
    assert logits.abs().sum() == 0  # input untouched


def test_frequency_penalty_steers_greedy_away_from_repeats():
    logits = torch.zeros(1, V)
    logits[0, 5] = 1.0
    logits[0, 6] = 0.9
    p = SamplingParams(temperature=0.0, frequency_penalty=0.2)
    assert run(logits, [p], outputs=[[]]).token_ids == [5]
    assert run(logits, [p], outputs=[[5]]).token_ids == [6]


def test_logprobs_are_of_the_raw_distribution_sorted_and_consistent():
    logits = logits_rows(3, seed=5)
    params = [
        SamplingParams(temperature=0.7, logprobs=5, logit_bias={0: 3.0}),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(temperature=0.0),
    ]
    out = run(logits, params, [torch.Generator().manual_seed(1), None, None])
    raw = torch.log_softmax(logits, -1)
    first, second, third = out.logprobs
    assert third is None
    assert second.top == ()
    assert math.isclose(second.logprob, raw[1, out.token_ids[1]].item(), rel_tol=1e-6)
    assert len(first.top) == 5
    values = [lp for _, lp in first.top]
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
    assert math.isclose(first.logprob, raw[0, out.token_ids[0]].item(), rel_tol=1e-6)
    top = dict(first.top)
    if first.token_id in top:
        assert math.isclose(top[first.token_id], first.logprob, rel_tol=1e-6)
    assert first.top[0][0] == int(raw[0].argmax())


def test_top_logprobs_capped_at_twenty():
    logits = logits_rows(1)
    (entry,) = token_logprobs(logits, [0], [50])
    assert len(entry.top) == 20


def test_bfloat16_logits_are_widened_only_where_a_row_needs_float32():
    # The runner hands over the model's bfloat16 logits: greedy rows take their argmax as
    # they are, a biased row is processed in float32, and logprobs are float32 log-softmax
    # of the raw logits.
    logits = torch.zeros(3, V, dtype=torch.bfloat16)
    logits[:, 7] = 8.0
    logits[:, 9] = 7.96875
    # 7.96875 + 0.04 = 8.00875 beats 8 in float32; in bfloat16 it would round to 8.0, a tie
    # that token 7 wins.
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, logit_bias={9: 0.04}),
        SamplingParams(temperature=0.0, logprobs=2),
    ]
    out = run(logits, params)
    assert out.token_ids == [7, 9, 7]
    assert out.logprobs[0] is None and out.logprobs[1] is None
    raw = torch.log_softmax(logits.float(), -1)
    assert math.isclose(out.logprobs[2].logprob, raw[2, 7].item(), rel_tol=1e-6)
    assert [t for t, _ in out.logprobs[2].top] == [7, 9]
    assert logits[1, 9].item() == 7.96875  # the bias was applied to a copy


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6])
def test_tiny_temperatures_are_greedy_not_nan(temperature: float) -> None:
    # The API accepts any temperature in [0, 2]; logits / 1e-300 overflow to inf.
    logits = torch.randn(3, 50) * 10
    out = run(logits, [SamplingParams(temperature=temperature, top_p=0.5)] * 3)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
