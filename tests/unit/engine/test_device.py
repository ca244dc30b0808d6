"""Where the engine runs: device names, the dtype a checkpoint runs in there, the KV budget.

This machine has no GPU, so the CUDA side is checked through its pure rules (dtype choice)
and through the errors a user gets when asking for a GPU that is not there.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from kakehashi.engine.builder import build_async_engine, resolve_device, runtime_dtype
from kakehashi.engine.engine import DEFAULT_KV_CACHE_BYTES, default_kv_cache_bytes
from kakehashi.engine.params import SamplingParams

NO_GPU = not torch.cuda.is_available()


def test_auto_is_a_gpu_where_torch_sees_one_else_the_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tpu", "unknown device 'tpu'"),
        ("gpu0", "unknown device 'gpu0'"),
        ("meta", "unsupported device 'meta'"),
        ("cuda:99", "cuda:99"),
    ],
)
def test_devices_this_machine_lacks_are_refused_by_name(name: str, message: str) -> None:
    if name == "cuda:99" and NO_GPU:
        message = "torch sees no CUDA GPU"
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error_before_any_loading(tiny_llama_dir) -> None:
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        build_async_engine(tiny_llama_dir, device="cuda")


@pytest.mark.parametrize(
    ("checkpoint", "device_type", "fast_bf16", "expected"),
    [
        (torch.float32, "cpu", True, torch.float32),
        (torch.float32, "cuda", True, torch.float32),
        (torch.bfloat16, "cpu", True, torch.bfloat16),
        (torch.float16, "cpu", True, torch.bfloat16),
        (torch.bfloat16, "cpu", False, torch.float32),  # no AVX-512 BF16: float32 is faster
        (torch.bfloat16, "cuda", True, torch.bfloat16),
        (torch.float16, "cuda", True, torch.bfloat16),
        (torch.bfloat16, "cuda", False, torch.float16),  # pre-Ampere GPUs: native half
    ],
)
def test_half_precision_runs_in_the_devices_fast_half_type(
    checkpoint: torch.dtype, device_type: str, fast_bf16: bool, expected: torch.dtype
) -> None:
    assert runtime_dtype(checkpoint, device_type, fast_bf16=fast_bf16) == expected


def test_cpu_kv_budget_is_capped_by_the_default_and_by_free_ram() -> None:
    budget = default_kv_cache_bytes(torch.device("cpu"))
    assert 0 < budget <= DEFAULT_KV_CACHE_BYTES
    assert default_kv_cache_bytes() == budget


def test_an_engine_built_for_the_cpu_keeps_model_cache_and_seeded_sampling_there(
    tiny_llama_dir,
) -> None:
    engine = build_async_engine(
        tiny_llama_dir, device="cpu", max_model_len=128, max_num_seqs=2, threads=1
    )
    core = engine.engine
    assert core.device == torch.device("cpu")
    assert all(k.device.type == "cpu" for k in core.kv_cache.keys)
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
    ids = engine.tokenizer.encode("hello there")

    async def run(request_id: str) -> list[int]:
        tokens: list[int] = []
        async for chunk in engine.generate(request_id, ids, params):
            tokens.extend(chunk.token_ids)
        return tokens

    async def main() -> tuple[list[int], list[int]]:
        first, second = await run("a"), await run("b")
        await engine.shutdown()
        return first, second

    first, second = asyncio.run(main())
    assert len(first) == params.max_tokens
    assert first == second  # the seeded generator lives where the logits are
