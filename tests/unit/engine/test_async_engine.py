"""AsyncEngine: concurrent streams, cancellation, aborts, failures, shutdown; the builder."""

from __future__ import annotations

import asyncio

import pytest
import torch

from kakehashi.engine.async_engine import AsyncEngine, EngineError
from kakehashi.engine.builder import build_async_engine
from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams
from kakehashi.engine.tokenizer import Tokenizer

PARAMS = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
ENDLESS = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module")
def parts(tiny_qwen2_dir):
    return load_model(tiny_qwen2_dir), Tokenizer.from_dir(tiny_qwen2_dir)


def make_engine(parts) -> LLMEngine:
    model, tokenizer = parts
    return LLMEngine(model, tokenizer, EngineConfig(max_model_len=512, num_kv_blocks=128))


def prompt(parts, i: int) -> list[int]:
    return parts[1].encode(f"request number {i}: " + "tell me a story " * (i % 5 + 1))


async def collect(engine: AsyncEngine, rid: str, ids, params) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(rid, ids, params)]


async def wait_idle(engine: LLMEngine, timeout: float = 30.0) -> None:
    """Wait until the engine thread has applied every abort (the engine is single-threaded)."""
    for _ in range(int(timeout / 0.01)):
        if not engine.has_unfinished():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("engine did not go idle")


def test_sixteen_concurrent_requests_finish_together(parts):
    sync = make_engine(parts)
    engine = AsyncEngine(sync)

    async def main():
        engine.start()
        results = await asyncio.gather(
            *(collect(engine, f"r{i}", prompt(parts, i), PARAMS) for i in range(16))
        )
        await engine.shutdown()
        return results

    results = asyncio.run(main())
    for chunks in results:
        assert chunks[-1].finished and chunks[-1].finish_reason is FinishReason.LENGTH
        assert sum(len(c.token_ids) for c in chunks) == PARAMS.max_tokens
    # Batched decode: far fewer forward passes than tokens generated.
    assert sync.num_steps < 16 * PARAMS.max_tokens / 4
    # Same tokens as one request alone.
    alone = AsyncEngine(make_engine(parts))
    single = asyncio.run(collect(alone, "solo", prompt(parts, 3), PARAMS))
    # (A reader that fell behind gets several tokens in one chunk: compare the tokens.)
    assert [t for c in single for t in c.token_ids] == [t for c in results[3] for t in c.token_ids]
    asyncio.run(alone.shutdown())
    assert sync.num_free_blocks == sync.num_kv_blocks


def test_cancelling_a_consumer_aborts_and_frees_its_blocks(parts):
    sync = make_engine(parts)
    engine = AsyncEngine(sync)

    async def main():
        engine.start()
        seen = asyncio.Event()

        async def consume():
            async for _ in engine.generate("victim", prompt(parts, 1), ENDLESS):
                seen.set()

        victim = asyncio.create_task(consume())
        other = asyncio.create_task(collect(engine, "other", prompt(parts, 2), PARAMS))
        await seen.wait()
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        other_chunks = await other
        await wait_idle(sync)
        # Leaving an `async for` early (break) aborts too.
        async for _ in engine.generate("breaker", prompt(parts, 4), ENDLESS):
            break
        await wait_idle(sync)
        await engine.shutdown()
        return other_chunks

    other_chunks = asyncio.run(main())
    assert other_chunks[-1].finish_reason is FinishReason.LENGTH
    assert sync.num_free_blocks == sync.num_kv_blocks
    assert sync.num_steps < ENDLESS.max_tokens


def test_abort_ends_the_stream_with_an_abort_chunk(parts):
    engine = AsyncEngine(make_engine(parts))

    async def main():
        chunks = []
        async for chunk in engine.generate("a", prompt(parts, 0), ENDLESS):
            chunks.append(chunk)
            if len(chunks) == 2:
                engine.abort("a")
        await engine.shutdown()
        return chunks

    chunks = asyncio.run(main())
    assert chunks[-1].finished and chunks[-1].finish_reason is FinishReason.ABORT
    assert len(chunks) < 10


def test_engine_failure_raises_engine_error_everywhere(parts):
    sync = make_engine(parts)
    engine = AsyncEngine(sync)

    async def main():
        streams = [engine.generate(f"r{i}", prompt(parts, i), ENDLESS) for i in range(3)]
        for stream in streams:  # all three in flight
            assert not (await anext(stream)).finished
        sync.kv_cache.keys.clear()  # break the engine for real: the next step fails
        for stream in streams:
            with pytest.raises(EngineError):
                async for _ in stream:
                    pass
        with pytest.raises(EngineError):
            await collect(engine, "late", prompt(parts, 0), PARAMS)
        await engine.shutdown()

    asyncio.run(main())


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(parts):
    sync = make_engine(parts)
    engine = AsyncEngine(sync)
    run = sync.runner.run
    broken = {"once": True}

    def fails_once(scheduled):  # a step that raises, as a kernel bug or a NaN might
        if broken.pop("once", False):
            raise RuntimeError("injected step failure")
        return run(scheduled)

    idle_blocks = sync.block_manager.num_free_blocks

    async def main():
        first = await collect(engine, "warm", prompt(parts, 0), PARAMS)
        sync.runner.run = fails_once
        with pytest.raises(EngineError, match="injected step failure"):
            await collect(engine, "unlucky", prompt(parts, 1), PARAMS)
        blocks_after_failure = sync.block_manager.num_free_blocks
        again = await collect(engine, "after", prompt(parts, 0), PARAMS)
        await engine.shutdown()
        return first, again, blocks_after_failure

    first, again, free = asyncio.run(main())
    assert [t for c in again for t in c.token_ids] == [t for c in first for t in c.token_ids]
    assert again[-1].finish_reason is FinishReason.LENGTH
    assert free == idle_blocks  # the failed request's blocks came back


def test_shutdown_aborts_in_flight_requests_and_refuses_new_ones(parts):
    engine = AsyncEngine(make_engine(parts))

    async def main():
        stream = engine.generate("a", prompt(parts, 0), ENDLESS)
        await anext(stream)
        await engine.shutdown()
        rest = [c async for c in stream]
        with pytest.raises(EngineError):
            await collect(engine, "b", prompt(parts, 0), PARAMS)
        return rest

    rest = asyncio.run(main())
    assert rest[-1].finish_reason is FinishReason.ABORT


def test_impossible_requests_raise_value_error(parts):
    engine = AsyncEngine(make_engine(parts))

    async def main():
        with pytest.raises(ValueError):
            await collect(engine, "e", [], PARAMS)
        with pytest.raises(ValueError):
            await collect(engine, "long", [1] * 513, PARAMS)
        await engine.shutdown()

    asyncio.run(main())


def test_build_async_engine_from_a_model_directory(tiny_llama_dir):
    threads = torch.get_num_threads()
    engine = build_async_engine(tiny_llama_dir, max_model_len=256, threads=threads, max_num_seqs=4)
    assert engine.max_model_len == 256
    assert engine.model_config.architecture == "LlamaForCausalLM"
    assert engine.engine.num_kv_blocks == 4 * 256 // 16
    assert torch.get_num_threads() == threads
    ids = engine.tokenizer.encode("hello there")

    async def main():
        chunks = await collect(engine, "x", ids, PARAMS)
        await engine.shutdown()
        return chunks

    chunks = asyncio.run(main())
    assert chunks[-1].completion_tokens == PARAMS.max_tokens
    default = build_async_engine(tiny_llama_dir, threads=threads, max_num_seqs=1)
    assert default.max_model_len == 4096  # the model's positions, under the 8192 cap
    with pytest.raises(ValueError):
        build_async_engine(tiny_llama_dir, max_model_len=10**6, threads=threads)


def test_interactive_requests_finish_before_queued_batch_lines(parts):
    model, tokenizer = parts
    config = EngineConfig(max_model_len=512, num_kv_blocks=128, max_num_seqs=1)
    engine = AsyncEngine(LLMEngine(model, tokenizer, config))
    finished: list[str] = []

    async def run(rid: str, priority: int) -> None:
        ids = prompt(parts, len(finished))
        async for chunk in engine.generate(rid, ids, PARAMS, priority=priority):
            if chunk.finished:
                finished.append(rid)

    async def main():
        engine.start()
        # Three batch lines, then an interactive request, all queued before a step runs.
        await asyncio.gather(*(run(f"batch-{i}", 1) for i in range(3)), run("interactive", 0))
        await engine.shutdown()

    asyncio.run(main())
    assert finished[0] == "interactive" and sorted(finished[1:]) == [
        "batch-0",
        "batch-1",
        "batch-2",
    ]
