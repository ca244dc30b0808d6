"""LLMEngine on tiny real models: batching, prefix reuse, stopping, aborts, logits parity."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from reference_context import ReferenceContext

from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams
from kakehashi.engine.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
TEXTS = [
    "def fibonacci(n):",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "hello",
    "class Counter:\n    def __init__(self) -> None:\n        self.value = 0\n" * 2,
    "Once upon a time there was a small model",
    "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 4,
    "import torch\nimport numpy as np\n",
]


@pytest.fixture(scope="module")
def parts(tiny_llama_dir):
    return load_model(tiny_llama_dir), Tokenizer.from_dir(tiny_llama_dir)


def make_engine(parts, **overrides) -> LLMEngine:
    model, tokenizer = parts
    config = {"max_model_len": 512, "max_num_seqs": 16, "num_kv_blocks": 256, **overrides}
    return LLMEngine(model, tokenizer, EngineConfig(**config))


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]):
    """Add all requests, step until done; return every request's chunks."""
    for rid, (ids, params) in requests.items():
        engine.add_request(rid, ids, params)
    chunks: dict[str, list[GenerationChunk]] = {rid: [] for rid in requests}
    steps = 0
    while engine.has_unfinished():
        for chunk in engine.step():
            assert not chunks[chunk.request_id] or not chunks[chunk.request_id][-1].finished
            chunks[chunk.request_id].append(chunk)
        steps += 1
        assert steps < 2000
    for rid, got in chunks.items():
        assert got[-1].finished, rid
    return chunks


def tokens_of(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def prompts(parts) -> list[list[int]]:
    return [parts[1].encode(t) for t in TEXTS]


def test_greedy_output_is_the_same_alone_batched_chunked_and_prefix_cached(parts):
    ps = prompts(parts)
    assert len({len(p) for p in ps}) == len(ps)
    alone = {}
    for i, p in enumerate(ps):
        alone[i] = tokens_of(run(make_engine(parts), {"r": (p, GREEDY)})["r"])
        assert len(alone[i]) == GREEDY.max_tokens

    batched = run(make_engine(parts), {str(i): (p, GREEDY) for i, p in enumerate(ps)})
    assert {int(k): tokens_of(v) for k, v in batched.items()} == alone

    # Small budget: long prompts are prefilled in chunks next to other sequences' decodes.
    chunked = run(
        make_engine(parts, max_num_batched_tokens=16),
        {str(i): (p, GREEDY) for i, p in enumerate(ps)},
    )
    assert {int(k): tokens_of(v) for k, v in chunked.items()} == alone

    engine = make_engine(parts)
    long = ps[3]
    first = run(engine, {"a": (long, GREEDY)})["a"]
    second = run(engine, {"b": (long, GREEDY)})["b"]
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens > 0
    assert second[0].cached_tokens == (len(long) - 1) // 16 * 16
    assert tokens_of(second) == tokens_of(first) == alone[3]
    assert text_of(second) == text_of(first)


def test_preemption_keeps_outputs_identical(parts):
    ps = prompts(parts)
    want = {
        str(i): tokens_of(run(make_engine(parts), {"r": (p, GREEDY)})["r"])
        for i, p in enumerate(ps)
    }
    # A pool just big enough for one full-length sequence forces preemption by recompute.
    engine = make_engine(parts, max_model_len=160, num_kv_blocks=11)
    got = run(engine, {str(i): (p, GREEDY) for i, p in enumerate(ps)})
    assert {k: tokens_of(v) for k, v in got.items()} == want
    assert engine.scheduler.num_preemptions > 0
    assert engine.num_free_blocks == 11


def test_logprobs_match_a_plain_full_forward(parts):
    model, tokenizer = parts
    prompt = tokenizer.encode(TEXTS[1])
    params = SamplingParams(
        temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=2
    )
    chunks = run(make_engine(parts, max_num_batched_tokens=8), {"r": (prompt, params)})["r"]
    output = tokens_of(chunks)
    with torch.inference_mode():
        ids = torch.tensor(prompt + output)
        hidden = model.forward(ids, torch.arange(len(ids)), ReferenceContext())
        ref = torch.log_softmax(model.compute_logits(hidden).float(), dim=-1)  # (L, V)

    entries = [lp for c in chunks for lp in c.logprobs]
    assert [e.token_id for e in entries] == output
    for j, entry in enumerate(entries):
        row = ref[len(prompt) - 1 + j]
        assert entry.token_id == int(row.argmax())
        assert math.isclose(entry.logprob, row[entry.token_id].item(), abs_tol=1e-4)
        assert len(entry.top) == 3
        for token_id, lp in entry.top:
            assert math.isclose(lp, row[token_id].item(), abs_tol=1e-4)

    prompt_lps = chunks[0].prompt_logprobs
    assert prompt_lps is not None and len(prompt_lps) == len(prompt)
    assert prompt_lps[0] is None
    for i in range(1, len(prompt)):
        entry = prompt_lps[i]
        assert entry.token_id == prompt[i]
        assert math.isclose(entry.logprob, ref[i - 1, prompt[i]].item(), abs_tol=1e-4)
        assert len(entry.top) == 2
    assert all(c.prompt_logprobs is None for c in chunks[1:])


def test_max_tokens_zero_returns_only_prompt_logprobs(parts):
    prompt = prompts(parts)[0]
    params = SamplingParams(max_tokens=0, prompt_logprobs=0)
    (chunk,) = run(make_engine(parts), {"r": (prompt, params)})["r"]
    assert chunk.finished and chunk.finish_reason is FinishReason.LENGTH
    assert chunk.token_ids == () and chunk.completion_tokens == 0
    assert len(chunk.prompt_logprobs) == len(prompt)


def test_max_tokens_finishes_with_length(parts):
    chunks = run(make_engine(parts), {"r": (prompts(parts)[0], GREEDY)})["r"]
    assert len(chunks) == GREEDY.max_tokens
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].completion_tokens == GREEDY.max_tokens
    assert all(not c.finished for c in chunks[:-1])
    assert chunks[-1].prompt_tokens == len(prompts(parts)[0])


def test_context_window_full_finishes_with_length(parts):
    prompt = prompts(parts)[1]
    engine = make_engine(parts, max_model_len=len(prompt) + 3)
    chunks = run(engine, {"r": (prompt, SamplingParams(max_tokens=50, ignore_eos=True))})["r"]
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].completion_tokens == 3


def test_stop_string_ends_generation_and_is_never_emitted(parts):
    prompt = prompts(parts)[4]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    full = text_of(run(make_engine(parts), {"r": (prompt, params)})["r"])
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    expected = full[: full.index(stop)]
    chunks = run(
        make_engine(parts),
        {"r": (prompt, replace(params, stop=(stop,)))},
    )["r"]
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert text_of(chunks) == expected
    assert chunks[-1].completion_tokens < 24


def test_eos_and_stop_token_ids_stop_without_text(parts):
    _, tokenizer = parts
    eos = tokenizer.eos_token_ids[0]
    prompt = prompts(parts)[0]
    forced = SamplingParams(temperature=0.0, max_tokens=5, logit_bias={eos: 1000.0})
    (chunk,) = run(make_engine(parts), {"r": (prompt, forced)})["r"]
    assert chunk.finish_reason is FinishReason.STOP
    assert chunk.token_ids == (eos,) and chunk.text == ""

    ignoring = SamplingParams(
        temperature=0.0, max_tokens=5, logit_bias={eos: 1000.0}, ignore_eos=True
    )
    chunks = run(make_engine(parts), {"r": (prompt, ignoring)})["r"]
    assert chunks[-1].finish_reason is FinishReason.LENGTH and len(chunks) == 5

    first = tokens_of(run(make_engine(parts), {"r": (prompt, GREEDY)})["r"])
    by_id = SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, stop_token_ids=(first[2],)
    )
    chunks = run(make_engine(parts), {"r": (prompt, by_id)})["r"]
    stop_at = first.index(first[2])
    assert tokens_of(chunks) == first[: stop_at + 1]
    assert chunks[-1].finish_reason is FinishReason.STOP


def test_seeded_sampling_is_reproducible_and_batch_independent(parts):
    ps = prompts(parts)
    seeded = SamplingParams(temperature=1.0, max_tokens=10, seed=7, ignore_eos=True)
    alone = tokens_of(run(make_engine(parts), {"s": (ps[0], seeded)})["s"])
    noisy = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    requests = {str(i): (p, noisy) for i, p in enumerate(ps[1:])}
    requests["s"] = (ps[0], seeded)
    together = run(make_engine(parts), requests)
    assert tokens_of(together["s"]) == alone


def test_abort_frees_blocks_and_reports_abort(parts):
    engine = make_engine(parts)
    total = engine.num_free_blocks
    ps = prompts(parts)
    engine.add_request("a", ps[1], GREEDY)
    engine.add_request("b", ps[3], GREEDY)
    engine.add_request("c", ps[6], GREEDY)
    engine.step()
    engine.step()
    assert engine.num_free_blocks < total
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_steps) == (3, 0, 2)
    assert stats.num_free_blocks == engine.num_free_blocks
    engine.abort("a")
    engine.abort("c")
    engine.abort("unknown")
    chunks = engine.step()
    finals = {c.request_id: c for c in chunks if c.finished}
    assert finals["a"].finish_reason is FinishReason.ABORT
    assert finals["c"].finish_reason is FinishReason.ABORT
    assert [c.request_id for c in chunks if not c.finished] == ["b"]
    engine.abort("b")
    engine.step()
    assert not engine.has_unfinished()
    assert engine.num_free_blocks == total


def test_impossible_requests_raise_value_error(parts):
    engine = make_engine(parts, max_model_len=32)
    with pytest.raises(ValueError):
        engine.add_request("e", [], GREEDY)
    with pytest.raises(ValueError):
        engine.add_request("long", [5] * 33, GREEDY)
    with pytest.raises(ValueError):
        engine.add_request("vocab", [10**9], GREEDY)
    engine.add_request("ok", [5] * 32, GREEDY)
    with pytest.raises(ValueError):
        engine.add_request("ok", [5], GREEDY)


def test_default_kv_pool_holds_every_sequence_at_full_length(parts):
    engine = make_engine(parts, num_kv_blocks=None, max_num_seqs=4, max_model_len=100)
    assert engine.num_kv_blocks == 4 * 7
    tiny = make_engine(parts, num_kv_blocks=None, kv_cache_bytes=1, max_model_len=100)
    assert tiny.num_kv_blocks == 7  # never less than one full-length sequence
