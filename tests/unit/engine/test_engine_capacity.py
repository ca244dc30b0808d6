"""Engine under load: bounded KV memory, the queue limit, aborts, prefix reuse, shared prompts."""

from __future__ import annotations

import asyncio

import pytest

from kakehashi.engine.async_engine import AsyncEngine
from kakehashi.engine.engine import EngineConfig, EngineOverloadedError, LLMEngine
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams
from kakehashi.engine.tokenizer import Tokenizer
from kakehashi.errors import ServiceUnavailableError

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def parts(tiny_llama_dir):
    return load_model(tiny_llama_dir), Tokenizer.from_dir(tiny_llama_dir)


def make_engine(parts, **overrides) -> LLMEngine:
    model, tokenizer = parts
    config = {"max_model_len": 256, "max_num_seqs": 64, "num_kv_blocks": 64, **overrides}
    return LLMEngine(model, tokenizer, EngineConfig(**config))


def drain(engine: LLMEngine, on_step=None) -> dict[str, list[GenerationChunk]]:
    chunks: dict[str, list[GenerationChunk]] = {}
    for _ in range(5000):
        if not engine.has_unfinished():
            return chunks
        for chunk in engine.step():
            chunks.setdefault(chunk.request_id, []).append(chunk)
        if on_step is not None:
            on_step(engine)
    raise AssertionError("the engine did not finish")


def tokens_of(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def prompt(parts, i: int) -> list[int]:
    return parts[1].encode(f"request {i}: " + "the bridge must be strong " * (i % 4 + 1))


def test_sixty_four_requests_stay_within_the_kv_pool_and_queue(parts):
    engine = make_engine(parts, num_kv_blocks=24, max_num_batched_tokens=128)
    for i in range(64):
        engine.add_request(str(i), prompt(parts, i), GREEDY)
    seen = {"max_used": 0, "max_waiting": 0}

    def check(e: LLMEngine) -> None:
        stats = e.stats()
        used = stats.num_kv_blocks - stats.num_free_blocks
        assert 0 <= used <= 24
        seen["max_used"] = max(seen["max_used"], used)
        seen["max_waiting"] = max(seen["max_waiting"], stats.num_waiting)

    chunks = drain(engine, check)
    assert len(chunks) == 64
    assert all(c[-1].finish_reason is FinishReason.LENGTH for c in chunks.values())
    assert seen["max_waiting"] > 0  # requests queued instead of over-allocating
    assert engine.num_free_blocks == 24
    # Queueing changes nothing about the answers: compare a few with a roomy engine.
    for i in (0, 17, 63):
        alone = make_engine(parts)
        alone.add_request("r", prompt(parts, i), GREEDY)
        assert tokens_of(drain(alone)["r"]) == tokens_of(chunks[str(i)])


def test_capacity_is_the_running_slots_plus_the_queue(parts):
    # Two slots and one place in the queue: three requests fit, though none is scheduled yet.
    engine = make_engine(parts, max_num_seqs=2, max_queue_len=1)
    assert engine.capacity == 3
    for i in range(3):
        engine.add_request(str(i), prompt(parts, i), GREEDY)
    with pytest.raises(EngineOverloadedError) as info:
        engine.add_request("3", prompt(parts, 3), GREEDY)
    error = info.value
    assert isinstance(error, ServiceUnavailableError)
    assert error.status_code == 503
    assert error.to_dict()["error"]["code"] == "engine_overloaded"
    assert "2 running slots" in error.message and "1 places in its queue" in error.message
    engine.step()  # scheduling moves requests from the queue to slots; the engine stays full
    with pytest.raises(EngineOverloadedError):
        engine.add_request("3", prompt(parts, 3), GREEDY)
    while not any(c.finished for c in engine.step()):  # a finished request makes room
        pass
    engine.add_request("3", prompt(parts, 3), GREEDY)
    assert drain(engine)["3"][-1].finish_reason is FinishReason.LENGTH


def test_a_queue_of_zero_admits_while_a_slot_is_free(parts):
    engine = make_engine(parts, max_num_seqs=2, max_queue_len=0)
    engine.add_request("0", prompt(parts, 0), GREEDY)
    engine.add_request("1", prompt(parts, 1), GREEDY)
    with pytest.raises(EngineOverloadedError):
        engine.add_request("2", prompt(parts, 2), GREEDY)
    assert len(drain(engine)) == 2


def test_async_engine_refuses_requests_beyond_the_queue_limit(parts):
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        sync = make_engine(parts, max_num_seqs=1, max_queue_len=1)
        engine = AsyncEngine(sync)
        running = engine.generate("0", prompt(parts, 0), long)
        await running.__anext__()  # admitted: the only running slot is taken
        queued = engine.generate("1", prompt(parts, 1), long)
        first_of_queued = asyncio.ensure_future(queued.__anext__())
        for _ in range(3000):
            if sync.stats().num_waiting == 1:
                break
            await asyncio.sleep(0.01)
        assert sync.stats().num_waiting == 1
        with pytest.raises(EngineOverloadedError):
            await engine.generate("2", prompt(parts, 2), GREEDY).__anext__()
        await engine.shutdown()
        await first_of_queued
        await running.aclose()
        await queued.aclose()

    asyncio.run(main())


def test_aborting_mid_prefill_and_while_waiting_frees_every_block(parts):
    engine = make_engine(parts, num_kv_blocks=16, max_num_batched_tokens=8, max_num_seqs=1)
    engine.add_request("a", prompt(parts, 3), GREEDY)
    engine.add_request("b", prompt(parts, 2), GREEDY)
    engine.step()
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting) == (1, 1)
    assert engine.num_free_blocks < 16
    engine.abort("a")
    engine.abort("b")
    finals = {c.request_id: c for c in engine.step()}
    assert {r: c.finish_reason for r, c in finals.items()} == {
        "a": FinishReason.ABORT,
        "b": FinishReason.ABORT,
    }
    assert not engine.has_unfinished()
    assert engine.num_free_blocks == 16


def test_chat_history_resent_with_one_new_message_prefills_only_the_new_tokens(parts):
    tokenizer = parts[1]
    engine = make_engine(parts, num_kv_blocks=128)
    history = tokenizer.encode("system: be brief. user: " + "tell me about bridges. " * 8)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    new_message: list[int] = []
    for turn in range(3):
        before = engine.stats().num_batched_tokens
        engine.add_request(f"t{turn}", history, params)
        chunks = drain(engine)[f"t{turn}"]
        fed = engine.stats().num_batched_tokens - before
        answer = tokens_of(chunks)
        if turn > 0:
            # Everything but the new message (and the partial last block) came from the cache.
            cached = chunks[0].cached_tokens
            assert cached >= len(history) - len(new_message) - 16
            assert fed == len(history) - cached + len(answer) - 1
        # The same turn without a prefix cache gives the same answer.
        fresh = make_engine(parts, num_kv_blocks=128, enable_prefix_caching=False)
        fresh.add_request("x", history, params)
        assert tokens_of(drain(fresh)["x"]) == answer
        new_message = tokenizer.encode(f" user: and what about turn {turn}?")
        history = history + answer + new_message


def test_n_choices_of_one_prompt_share_its_blocks(parts):
    engine = make_engine(parts, num_kv_blocks=128)
    shared = prompt(parts, 3) + prompt(parts, 7)
    assert len(shared) > 40
    for i in range(3):
        engine.add_request(f"c{i}", shared, GREEDY)
    chunks = drain(engine)
    cached = sorted(c[0].cached_tokens for c in chunks.values())
    full_blocks = (len(shared) - 1) // 16 * 16
    assert cached == [0, full_blocks, full_blocks]
    assert len({tuple(tokens_of(c)) for c in chunks.values()}) == 1
    # The prompt was fed once, plus only the uncached tails of the other two choices.
    fed = engine.stats().num_batched_tokens
    decode = 3 * (GREEDY.max_tokens - 1)
    assert fed == len(shared) + 2 * (len(shared) - full_blocks) + decode
