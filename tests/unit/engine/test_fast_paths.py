"""The CPU fast paths of the Llama model (matrix-vector for one token, prepacked oneDNN
weights for several) and of batch-1 decode attention compute the same function as the
plain layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_context import ReferenceContext

from kakehashi.engine.kernels import TORCH_KERNELS
from kakehashi.engine.kv_cache import KVCache, PagedAttentionContext, SequenceSlice
from kakehashi.engine.models.llama import Projection, RMSNorm
from kakehashi.engine.models.loader import load_model


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bfloat16 on this CPU"
)
@pytest.mark.parametrize("arch_dir", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_prepacked_bfloat16_model_matches_the_plain_one(arch_dir, request):
    model_dir = request.getfixturevalue(arch_dir)
    plain = load_model(model_dir, dtype=torch.bfloat16)
    packed = load_model(model_dir, dtype=torch.bfloat16)
    packed.use_kernels(TORCH_KERNELS, pack=True)
    assert all(m.onednn_weight is not None for m in packed.modules() if isinstance(m, Projection))
    tokens = torch.tensor([5, 17, 300, 42, 9, 1000, 7])

    def logits(model, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            ctx = ReferenceContext()
            prompt = model.forward(ids[:-1], torch.arange(len(ids) - 1), ctx)  # T > 1
            last = model.forward(ids[-1:], torch.tensor([len(ids) - 1]), ctx)  # T == 1
            return model.compute_logits(torch.cat((prompt, last)))

    want, got = logits(plain, tokens), logits(packed, tokens)
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_fp32_models_are_not_prepacked(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    model.use_kernels(TORCH_KERNELS, pack=True)
    assert all(m.onednn_weight is None for m in model.modules() if isinstance(m, Projection))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_upcast_normalize_cast_back_formula(dtype):
    norm = RMSNorm(576, 1e-5, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) + 0.5)
    x = (torch.randn(9, 576, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    x32 = x.float()
    want = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    with torch.inference_mode():
        got = norm(x)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6 if dtype == torch.float32 else 0)


@pytest.mark.parametrize("block_table", [[3, 4, 5], [5, 3, 4]])
def test_single_decode_reads_the_same_keys_from_consecutive_or_scattered_blocks(block_table):
    """One decoding sequence on consecutive blocks reads them as a view, else gathers them;
    both see the same context as a plain attention over it."""
    bs, hkv, hq, d, context = 4, 2, 4, 8, 11
    cache = KVCache(
        num_layers=1, num_blocks=8, block_size=bs, num_kv_heads=hkv, head_dim=d,
        dtype=torch.float32,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, context, hkv, d, generator=gen)
    slots = torch.tensor([block_table[p // bs] * bs + p % bs for p in range(context)])
    k_flat, v_flat = cache.flat(0)
    k_flat[slots[:-1]], v_flat[slots[:-1]] = keys[:-1], values[:-1]
    seq = SequenceSlice(0, 1, context, torch.tensor(block_table))
    ctx = PagedAttentionContext(cache, slots[-1:], [seq])
    q = torch.randn(1, hq, d, generator=gen)
    got = ctx.attend(0, q, keys[-1:], values[-1:])
    want = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        keys.transpose(0, 1).repeat_interleave(hq // hkv, 0),
        values.transpose(0, 1).repeat_interleave(hq // hkv, 0),
    )  # (Hq, 1, D)
    torch.testing.assert_close(got, want.transpose(0, 1))
