"""Our AVX-512 BF16 kernels compute the same functions as torch, and the model and engine
give the same results with them as without."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from reference_context import ReferenceContext

from kakehashi.engine import kernels
from kakehashi.engine.engine import EngineConfig, LLMEngine
from kakehashi.engine.kv_cache import KVCache, PagedAttentionContext, SequenceSlice
from kakehashi.engine.models.llama import DecoderLayer, Projection
from kakehashi.engine.models.loader import load_model
from kakehashi.engine.models.tiny import make_tiny_model
from kakehashi.engine.params import SamplingParams
from kakehashi.engine.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(
    not kernels.bf16_kernels_available(), reason="no AVX-512 BF16 CPU or no compiler"
)
ops = torch.ops.kakehashi if kernels.bf16_kernels_available() else None
# What an engine of a bfloat16 model resolves on this machine with the kernels allowed.
KERNELS = kernels.resolve_kernels(True, device=torch.device("cpu"), dtype=torch.bfloat16)


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(torch.bfloat16)


def _assert_bf16_close(got: torch.Tensor, want_fp32: torch.Tensor) -> None:
    """Equal up to the rounding of a float32 sum taken in another order (a bf16 ulp or so)."""
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want_fp32.bfloat16().float(), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize(("out_features", "in_features"), [(1, 16), (7, 72), (100, 576), (961, 96)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_torch(rows, out_features, in_features, with_bias):
    x = _rand(rows, in_features, seed=1)
    w = _rand(out_features, in_features, seed=2, scale=in_features**-0.5)
    bias = _rand(out_features, seed=3) if with_bias else None
    want = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    _assert_bf16_close(ops.linear(x, w, bias), want)


def test_linear_reads_strided_rows():
    wide = _rand(3, 200, seed=4)
    x = wide[:, 10:138]  # rows 200 apart, each contiguous
    w = _rand(50, 128, seed=5, scale=0.1)
    _assert_bf16_close(ops.linear(x, w, None), F.linear(x.float(), w.float()))


def test_linear_rejects_bad_inputs():
    w = _rand(8, 32, seed=6)
    with pytest.raises(RuntimeError, match="bfloat16"):
        ops.linear(torch.randn(1, 32), w, None)
    with pytest.raises(RuntimeError, match="features"):
        ops.linear(_rand(1, 16, seed=7), w, None)
    with pytest.raises(RuntimeError, match="bias must match"):
        ops.linear(_rand(1, 32, seed=7), w, _rand(9, seed=8))


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_rms_norm_matches_the_upcast_normalize_cast_back_formula(rows):
    x = _rand(rows, 576, seed=9, scale=4.0)
    weight = _rand(576, seed=10)
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    want = weight * normed
    got = ops.rms_norm(x, weight, 1e-5)
    # Same math; the sum of squares may round differently in its last bit.
    torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=1e-6)
    assert (got != want).float().mean() < 0.01


@pytest.mark.parametrize("rows", [1, 5])
def test_add_rms_norm_adds_in_place_then_normalizes(rows):
    x = _rand(rows, 200, seed=15, scale=3.0)
    delta = _rand(rows, 200, seed=16)
    weight = _rand(200, seed=17)
    want_x = x + delta
    want = ops.rms_norm(want_x, weight, 1e-6)
    got = ops.add_rms_norm_(x, delta, weight, 1e-6)
    assert torch.equal(x, want_x)
    assert torch.equal(got, want)


@pytest.mark.parametrize(("tokens", "heads", "head_dim"), [(1, 12, 64), (7, 5, 128), (3, 2, 24)])
def test_rotary_matches_the_model_formula(tokens, heads, head_dim):
    from kakehashi.engine.models.llama import RotaryEmbedding, _apply_rotary

    rope = RotaryEmbedding(head_dim, 10000.0, None)
    angles = rope(torch.arange(100, 100 + tokens), torch.bfloat16)
    x = _rand(tokens, heads + 2, head_dim, seed=18)  # the last two heads stay as they are
    want = _apply_rotary(x[:, :heads], angles)
    got = x.clone()
    ops.rotary_(got, *angles, heads)
    torch.testing.assert_close(got[:, :heads], want, atol=1e-2, rtol=1e-2)
    assert (got[:, :heads] != want).float().mean() < 0.01  # the same roundings, in practice
    assert torch.equal(got[:, heads:], x[:, heads:])


@pytest.mark.parametrize("count", [0, 1, 300])
def test_embedding_is_torchs_lookup(count):
    table = _rand(1000, 72, seed=31)
    ids = torch.randint(0, 1000, (count,), generator=torch.Generator().manual_seed(32))
    assert torch.equal(ops.embedding(table, ids), F.embedding(ids, table))
    with pytest.raises(RuntimeError, match="id 1000 is out of range for 1000 rows"):
        ops.embedding(table, torch.tensor([3, 1000]))
    with pytest.raises(RuntimeError, match="id -1 is out of range"):
        ops.embedding(table, torch.tensor([-1]))


@pytest.mark.parametrize(("rows", "width"), [(1, 1536), (4, 100)])
def test_silu_mul_matches_torch(rows, width):
    gate_up = _rand(rows, 2 * width, seed=19, scale=4.0)
    gate, up = gate_up.split(width, dim=-1)
    want = F.silu(gate) * up
    got = ops.silu_mul(gate_up)
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
    assert (got != want).float().mean() < 0.01


def _paged_cache(
    lengths: list[int], *, block_size: int, kv_heads: int, head_dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """Caches filled with random keys/values; each sequence gets shuffled, scattered blocks."""
    needed = [-(-n // block_size) for n in lengths]
    num_blocks = sum(needed) + 3
    k_cache = _rand(num_blocks, block_size, kv_heads, head_dim, seed=seed)
    v_cache = _rand(num_blocks, block_size, kv_heads, head_dim, seed=seed + 1)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables, start = [], 0
    for n in needed:
        tables.append(order[start : start + n])
        start += n
    width = max(needed)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    return k_cache, v_cache, padded, tables


def _reference_attention(q, k_cache, v_cache, tables, lengths, block_size):
    out = []
    for b, (table, n) in enumerate(zip(tables, lengths, strict=True)):
        slots = [table[t // block_size] * block_size + t % block_size for t in range(n)]
        k = k_cache.flatten(0, 1)[slots].float().transpose(0, 1)  # (Hkv, n, D)
        v = v_cache.flatten(0, 1)[slots].float().transpose(0, 1)
        groups = q.shape[1] // k.shape[0]
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        scores = (q[b].float()[:, None, :] @ k.transpose(1, 2))[:, 0] / math.sqrt(q.shape[-1])
        out.append((scores.softmax(-1)[:, None, :] @ v)[:, 0])  # (Hq, D)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim"),
    # Head dims 64 and 128 have their own loops, with query heads in register blocks of up to
    # four (64) or two (128): groups of 3, 7 and 8 leave different remainders.
    [(9, 3, 64), (14, 2, 64), (16, 2, 64), (4, 4, 128), (6, 2, 128), (4, 2, 16), (2, 1, 48)],
)
def test_paged_decode_attention_matches_softmax_attention(q_heads, kv_heads, head_dim):
    lengths, block_size = [1, 15, 16, 17, 100, 333], 16
    k_cache, v_cache, padded, tables = _paged_cache(
        lengths, block_size=block_size, kv_heads=kv_heads, head_dim=head_dim, seed=11
    )
    # q as the model passes it: a view into a wider (B, Hq + Hkv, D) tensor.
    qk = _rand(len(lengths), q_heads + kv_heads, head_dim, seed=12)
    q = qk[:, :q_heads]
    lens = torch.tensor(lengths, dtype=torch.int32)
    got = ops.paged_decode_attention(q, k_cache, v_cache, padded, lens, head_dim**-0.5)
    want = _reference_attention(q, k_cache, v_cache, tables, lengths, block_size)
    _assert_bf16_close(got, want)


@pytest.mark.parametrize("lengths", [[3000], [700, 5], [257]])
def test_long_contexts_split_across_threads_give_the_same_attention(lengths):
    # Few sequences with long contexts: each is cut into chunks whose softmax partials merge.
    block_size = 16
    k_cache, v_cache, padded, tables = _paged_cache(
        lengths, block_size=block_size, kv_heads=2, head_dim=64, seed=27
    )
    q = _rand(len(lengths), 14, 64, seed=28)
    lens = torch.tensor(lengths, dtype=torch.int32)
    got = ops.paged_decode_attention(q, k_cache, v_cache, padded, lens, 0.125)
    want = _reference_attention(q, k_cache, v_cache, tables, lengths, block_size)
    _assert_bf16_close(got, want)


def test_paged_decode_attention_rejects_lengths_beyond_the_block_table():
    k_cache, v_cache, padded, _ = _paged_cache(
        [20], block_size=16, kv_heads=1, head_dim=16, seed=13
    )
    q = _rand(1, 2, 16, seed=14)
    with pytest.raises(RuntimeError, match="does not fit its block table"):
        ops.paged_decode_attention(
            q, k_cache, v_cache, padded, torch.tensor([33], dtype=torch.int32), 0.25
        )
    bad_table = torch.tensor([[0, 999]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="block id out of range"):
        ops.paged_decode_attention(
            q, k_cache, v_cache, bad_table, torch.tensor([20], dtype=torch.int32), 0.25
        )


@pytest.fixture(scope="module")
def bf16_llama_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama with a real head size (64) in bfloat16."""
    return make_tiny_model(
        tmp_path_factory.mktemp("bf16-llama"),
        arch="llama",
        hidden_size=128,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=256,
        vocab_size=512,
        dtype="bfloat16",
    )


def test_model_with_kernels_matches_the_model_without(bf16_llama_dir):
    plain = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    fast = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    assert KERNELS.bf16
    fast.use_kernels(KERNELS, pack=True)
    tokens = torch.tensor([5, 17, 300, 42, 9, 100, 7])

    def decode_logits(model) -> torch.Tensor:
        with torch.inference_mode():
            ctx = ReferenceContext()
            model.forward(tokens[:3], torch.arange(3), ctx)
            steps = [
                model.forward(tokens[i : i + 1], torch.tensor([i]), ctx) for i in range(3, 7)
            ]  # one token at a time: the kernels' path
            return model.compute_logits(torch.cat(steps))

    torch.testing.assert_close(decode_logits(fast), decode_logits(plain), atol=0.05, rtol=0.05)


def test_engine_decodes_a_batch_through_the_attention_kernel(bf16_llama_dir):
    model = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    config = EngineConfig(max_model_len=256, num_kv_blocks=64)
    engine = LLMEngine(model, Tokenizer.from_dir(bf16_llama_dir), config)
    assert engine.kv_cache.cpu_kernels
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompts = [[1, 2, 3], list(range(5, 45)), [7] * 20]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for chunk in engine.step():
            outputs[chunk.request_id].extend(chunk.token_ids)
    assert engine.block_manager.num_free_blocks == 64  # every block returned

    # Greedy up to bf16 noise: each token the batched kernels chose is the plain model's
    # argmax, or within rounding of it (this random model's logits are close together).
    plain = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    for i, prompt in enumerate(prompts):
        chosen = outputs[str(i)]
        assert len(chosen) == 12
        ids = torch.tensor(prompt + chosen[:-1])
        with torch.inference_mode():
            hidden = plain.forward(ids, torch.arange(len(ids)), ReferenceContext())
            logits = plain.compute_logits(hidden[len(prompt) - 1 :])  # (12, V)
        picked = logits.gather(1, torch.tensor(chosen)[:, None])[:, 0]
        assert torch.all(picked >= logits.max(-1).values - 0.05), (picked, logits.max(-1))


def test_fp32_models_do_not_use_the_kernels(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    assert (
        kernels.resolve_kernels(True, device=torch.device("cpu"), dtype=model.lm_head.weight.dtype)
        == kernels.TORCH_KERNELS
    )
    cache = KVCache(
        num_layers=1,
        num_blocks=4,
        block_size=16,
        num_kv_heads=2,
        head_dim=16,
        dtype=torch.float32,
        cpu_kernels=True,
    )
    assert not cache.cpu_kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_matches_torch_including_ties_and_infinities(dtype):
    x = torch.randn(7, 1000, generator=torch.Generator().manual_seed(20)).to(dtype)
    x[1, 17] = x[1, 900] = 50.0  # a tie: the first one wins
    x[2] = float("-inf")  # nothing to pick: index 0, as torch
    x[3, 999] = float("inf")
    x[4, :] = 3.0
    x[5, 995:] = 9.0  # maximum in the masked tail
    got = ops.argmax_rows(x)
    assert got.tolist() == torch.argmax(x, dim=-1).tolist()
    assert got.dtype == torch.int64
    assert KERNELS.argmax_rows(x[:, :333]).tolist() == torch.argmax(x[:, :333], -1).tolist()
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.argmax_rows(x.half())


amx_only = pytest.mark.skipif(not kernels.amx_usable(), reason="no usable AMX here")


@amx_only
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 33, 64, 65])
@pytest.mark.parametrize(("out_features", "in_features"), [(100, 72), (33, 1), (576, 576)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_amx_linear_matches_torch(rows, out_features, in_features, with_bias):
    x = _rand(rows, in_features, seed=21)
    w = _rand(out_features, in_features, seed=22, scale=in_features**-0.5)
    bias = _rand(out_features, seed=23) if with_bias else None
    packed = ops.amx_pack(w)
    got = ops.amx_linear(x, packed, out_features, in_features, bias)
    want = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    _assert_bf16_close(got, want)


@amx_only
def test_amx_linear_reads_strided_rows():
    wide = _rand(5, 300, seed=24)
    x = wide[:, 4:260]
    w = _rand(40, 256, seed=25, scale=0.1)
    got = ops.amx_linear(x, ops.amx_pack(w), 40, 256, None)
    _assert_bf16_close(got, F.linear(x.float(), w.float()))


@amx_only
def test_amx_packs_replace_onednn_packs(bf16_llama_dir):
    model = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    model.use_kernels(KERNELS, pack=True)
    projections = [m for m in model.modules() if isinstance(m, Projection)]
    assert projections
    assert all(m.amx_weight is not None and m.onednn_weight is None for m in projections)


def test_store_kv_writes_each_token_into_its_slot():
    k_cache = torch.zeros(4, 16, 2, 64, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    kv = _rand(3, 2 + 2 + 2, 64, seed=26)  # q, k, v heads of a fused projection
    k, v = kv[:, 2:4], kv[:, 4:]
    slots = torch.tensor([5, 63, 17])
    ops.store_kv_(k_cache, v_cache, slots, k, v)
    assert torch.equal(k_cache.view(-1, 2, 64)[slots], k)
    assert torch.equal(v_cache.view(-1, 2, 64)[slots], v)
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 3
    with pytest.raises(RuntimeError, match="out of range"):
        ops.store_kv_(k_cache, v_cache, torch.tensor([0, 1, 64]), k, v)


def test_switched_off_in_the_settings_nothing_is_built_or_loaded(bf16_llama_dir):
    script = (
        "import torch\n"
        "from kakehashi.engine.engine import EngineConfig, LLMEngine\n"
        "from kakehashi.engine.models.loader import load_model\n"
        "from kakehashi.engine.tokenizer import Tokenizer\n"
        "from kakehashi.settings import Settings\n"
        f"model = load_model({str(bf16_llama_dir)!r}, dtype=torch.bfloat16)\n"
        "config = EngineConfig(max_model_len=64, cpu_kernels=Settings().cpu_kernels)\n"
        f"engine = LLMEngine(model, Tokenizer.from_dir({str(bf16_llama_dir)!r}), config)\n"
        "assert not engine.kernels.bf16 and not engine.kv_cache.cpu_kernels\n"
        "assert 'kakehashi_cpu_kernels' not in open('/proc/self/maps').read()\n"
        "print('torch only')\n"
    )
    env = {**os.environ, "KAKEHASHI_CPU_KERNELS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch only"


def test_a_stale_build_lock_is_cleared_and_a_live_one_kept(tmp_path):
    from kakehashi.engine.kernels import STALE_LOCK_SECONDS, clear_stale_build_lock

    assert not clear_stale_build_lock(tmp_path)  # no lock at all
    lock = tmp_path / "lock"
    lock.write_text("")
    mtime = lock.stat().st_mtime
    assert not clear_stale_build_lock(tmp_path, now=mtime + 5)  # a build in progress
    assert lock.exists()
    assert clear_stale_build_lock(tmp_path, now=mtime + STALE_LOCK_SECONDS + 1)
    assert not lock.exists()


def test_amx_is_probed_where_the_cpu_has_it():
    # On an AMX CPU the probe must pass: a failure would silently cost batched speed.
    assert kernels.amx_usable() == kernels.cpu_supports_amx()


@pytest.fixture(scope="module")
def bf16_qwen_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2 (biases on q/k/v) in bfloat16, with 3 query heads per kv head."""
    return make_tiny_model(
        tmp_path_factory.mktemp("bf16-qwen"),
        arch="qwen2",
        hidden_size=192,
        num_heads=3,
        num_kv_heads=1,
        intermediate_size=320,
        vocab_size=512,
        num_layers=3,
        dtype="bfloat16",
    )


def _generate(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, list[tuple]]:
    """Greedy tokens with their top-3 logprobs, per request."""
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=3)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    out: dict[str, list[tuple]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for chunk in engine.step():
            for token, lp in zip(chunk.token_ids, chunk.logprobs or (), strict=True):
                out[chunk.request_id].append((token, lp.logprob, lp.top))
    return out


@pytest.mark.parametrize("model_dir", ["bf16_llama_dir", "bf16_qwen_dir"])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_fused_decode_layers_give_the_bits_of_the_layer_by_layer_kernels(
    model_dir, batch, request, monkeypatch
):
    # Batch 1 and 2 run the matrix-vector kernel; 5 runs AMX where the CPU has it (and the
    # layer-by-layer path everywhere else, which must then give the same bits trivially).
    path = request.getfixturevalue(model_dir)
    prompts = [list(range(3 + i, 3 + i + 7 * (i + 1))) for i in range(batch)]
    results = {}
    fused_steps: list[int] = []
    real_decode_step = DecoderLayer.decode_step

    def counting_decode_step(self, x, *args):
        fused_steps.append(x.shape[0])
        return real_decode_step(self, x, *args)

    monkeypatch.setattr(DecoderLayer, "decode_step", counting_decode_step)
    for fused in (True, False):
        model = load_model(path, dtype=torch.bfloat16)
        engine = LLMEngine(model, Tokenizer.from_dir(path), EngineConfig(max_model_len=256))
        model.fused_decode &= fused
        results[fused] = _generate(engine, prompts)
    assert results[True] == results[False]
    assert all(len(tokens) == 10 for tokens in results[True].values())
    if batch <= 3 or kernels.amx_usable():
        # every decode step of the fused run went through it, one call per layer
        assert fused_steps and set(fused_steps) <= set(range(1, batch + 1))
    else:
        assert not fused_steps


def test_mixed_prefill_and_decode_steps_do_not_take_the_fused_path(bf16_llama_dir):
    model = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    engine = LLMEngine(model, Tokenizer.from_dir(bf16_llama_dir), EngineConfig(max_model_len=256))
    cache = engine.kv_cache
    decode = SequenceSlice(0, 1, 9, torch.tensor([0]))
    prefill = SequenceSlice(1, 4, 4, torch.tensor([1]))
    only_decode = PagedAttentionContext(cache, torch.tensor([8]), [decode])
    assert only_decode.paged_decode is not None
    assert only_decode.paged_decode.context_lens.tolist() == [9]
    mixed = PagedAttentionContext(cache, torch.tensor([8, 16, 17, 18, 19]), [decode, prefill])
    assert mixed.paged_decode is None


def test_decode_layer_rejects_weights_that_do_not_fit_the_cache():
    hidden, d = 64, 16
    x = _rand(1, hidden, seed=30)
    norm = torch.ones(hidden, dtype=torch.bfloat16)
    qkv = _rand(4 * d + 3, hidden, seed=31)  # not whole heads
    o = _rand(hidden, 2 * d, seed=32)
    gate_up, down = _rand(64, hidden, seed=33), _rand(hidden, 32, seed=34)
    k_cache = torch.zeros(2, 16, 1, d, dtype=torch.bfloat16)
    cos = sin = torch.ones(1, 1, d, dtype=torch.bfloat16)
    args = dict(
        slots=torch.tensor([0]),
        tables=torch.zeros(1, 1, dtype=torch.int32),
        lens=torch.ones(1, dtype=torch.int32),
    )

    def call(qkv_weight: torch.Tensor) -> torch.Tensor:
        return ops.decode_layer_(
            x, None, norm, qkv_weight, None, None, o, None, None, norm, gate_up, None, down,
            None, cos, sin, k_cache, k_cache.clone(), args["slots"], args["tables"],
            args["lens"], 1e-5,
        )  # fmt: skip

    with pytest.raises(RuntimeError, match="whole heads"):
        call(qkv)
    with pytest.raises(RuntimeError, match="o_weight must take the 48"):
        call(_rand(5 * d, hidden, seed=35))  # 3 query heads, but o_proj takes 2
    assert call(_rand(4 * d, hidden, seed=36)).shape == (1, hidden)  # 2 query heads fit


def _reference_prefill(q, k_cache, v_cache, table, context_len, block_size):
    """float32 causal attention of q's n tokens (the last n of the context) over the cache."""
    n, q_heads, _ = q.shape
    slots = [table[t // block_size] * block_size + t % block_size for t in range(context_len)]
    k = k_cache.flatten(0, 1)[slots].float()  # (L, Hkv, D)
    v = v_cache.flatten(0, 1)[slots].float()
    groups = q_heads // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    allowed = (
        torch.arange(context_len)[None, :] <= torch.arange(context_len - n, context_len)[:, None]
    )
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed
    )
    return out.transpose(0, 1)


@amx_only
@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim", "new", "context", "block_size"),
    [
        (2, 1, 64, 1, 1, 16),  # a one-token prompt
        (9, 3, 64, 17, 17, 16),  # a fresh prompt, not a whole tile of rows
        (9, 3, 64, 17, 100, 16),  # new tokens after a cached prefix
        (14, 2, 64, 70, 70, 16),
        (4, 4, 128, 20, 300, 32),  # another block size
        (8, 2, 256, 7, 65, 16),  # one key past a whole chunk
        (3, 1, 64, 100, 1000, 16),
    ],
)
def test_paged_prefill_attention_matches_causal_softmax_attention(
    q_heads, kv_heads, head_dim, new, context, block_size
):
    k_cache, v_cache, _, tables = _paged_cache(
        [context], block_size=block_size, kv_heads=kv_heads, head_dim=head_dim, seed=40
    )
    qk = _rand(new, q_heads + kv_heads, head_dim, seed=41)  # q as a view, as the model passes it
    q = qk[:, :q_heads]
    table = torch.tensor(tables[0], dtype=torch.int32)
    got = ops.paged_prefill_attention(q, k_cache, v_cache, table, context, head_dim**-0.5)
    _assert_bf16_close(got, _reference_prefill(q, k_cache, v_cache, tables[0], context, block_size))


@amx_only
@pytest.mark.parametrize(("q_heads", "kv_heads", "context"), [(6, 2, 150), (9, 3, 300)])
def test_prefill_attention_gives_a_query_the_same_bits_with_or_without_its_prefix_cached(
    q_heads, kv_heads, context
):
    # Prefix reuse must not change greedy output: a token's attention is computed the same
    # way whether the tokens before it were prefilled in this call or in an earlier one.
    # Each split puts a token in a different tile of rows, next to tokens that see less of
    # the context (the kernel's masked path) or all of it (its unmasked path).
    k_cache, v_cache, _, tables = _paged_cache(
        [context], block_size=16, kv_heads=kv_heads, head_dim=64, seed=42
    )
    q = _rand(context, q_heads, 64, seed=43)
    table = torch.tensor(tables[0], dtype=torch.int32)
    whole = ops.paged_prefill_attention(q, k_cache, v_cache, table, context, 0.125)
    for start in range(1, context, 11):
        tail = ops.paged_prefill_attention(q[start:], k_cache, v_cache, table, context, 0.125)
        assert torch.equal(whole[start:], tail), f"tokens from {start} on differ"


@amx_only
def test_prefill_attention_after_a_context_too_long_to_keep_its_packing_buffers():
    # The kernel keeps its packed keys and values between calls up to 16 MiB; this context
    # (8 kv heads of 128, 8,300 tokens) needs more, so the buffers are given back after it.
    for context, new in [(8300, 3), (40, 40)]:
        k_cache, v_cache, _, tables = _paged_cache(
            [context], block_size=16, kv_heads=8, head_dim=128, seed=46
        )
        q = _rand(new, 8, 128, seed=47)
        table = torch.tensor(tables[0], dtype=torch.int32)
        got = ops.paged_prefill_attention(q, k_cache, v_cache, table, context, 128**-0.5)
        want = _reference_prefill(q, k_cache, v_cache, tables[0], context, 16)
        _assert_bf16_close(got, want)


@amx_only
def test_paged_prefill_attention_rejects_bad_arguments():
    k_cache, v_cache, _, tables = _paged_cache(
        [40], block_size=16, kv_heads=1, head_dim=64, seed=44
    )
    table = torch.tensor(tables[0], dtype=torch.int32)
    q = _rand(4, 2, 64, seed=45)
    with pytest.raises(RuntimeError, match="cover the n query tokens"):
        ops.paged_prefill_attention(q, k_cache, v_cache, table, 3, 0.125)
    with pytest.raises(RuntimeError, match="does not fit its block table"):
        ops.paged_prefill_attention(q, k_cache, v_cache, table, 49, 0.125)
    with pytest.raises(RuntimeError, match="block id out of range"):
        ops.paged_prefill_attention(
            q, k_cache, v_cache, torch.tensor([0, 1, 99], dtype=torch.int32), 40, 0.125
        )
    small = torch.zeros(4, 16, 1, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head dim must be 64, 128 or 256"):
        ops.paged_prefill_attention(_rand(1, 1, 32, seed=46), small, small, table, 1, 0.2)


@amx_only
def test_engine_prefills_through_the_attention_kernel_as_through_sdpa(bf16_llama_dir):
    # Same greedy tokens and logprobs (to bf16 noise) with prompt attention on the kernel
    # and on torch's SDPA, including a second request that reuses the first one's prefix.
    prompts = [list(range(3, 90)), [*range(3, 90), 7, 8, 9]]
    results = {}
    for kernel in (True, False):
        model = load_model(bf16_llama_dir, dtype=torch.bfloat16)
        engine = LLMEngine(
            model, Tokenizer.from_dir(bf16_llama_dir), EngineConfig(max_model_len=256)
        )
        assert engine.kv_cache.prefill_kernel
        engine.kv_cache.prefill_kernel = kernel
        results[kernel] = _generate(engine, prompts[:1]) | {
            "1": _generate(engine, prompts[1:])["0"]
        }
    for rid in ("0", "1"):
        kernel_run, sdpa_run = results[True][rid], results[False][rid]
        assert len(kernel_run) == len(sdpa_run) == 10
        for (tok_a, lp_a, _), (tok_b, lp_b, _) in zip(kernel_run, sdpa_run, strict=True):
            assert tok_a == tok_b or abs(lp_a - lp_b) < 0.05
            assert abs(lp_a - lp_b) < 0.05


def test_packed_weight_copies_need_room_for_themselves_and_headroom():
    from kakehashi.engine.engine import PACK_HEADROOM_BYTES, room_for_packed_weights

    assert room_for_packed_weights(10**9, None)  # unknown: pack, as before
    assert room_for_packed_weights(10**9, 10**9 + PACK_HEADROOM_BYTES)
    assert not room_for_packed_weights(10**9, 10**9 + PACK_HEADROOM_BYTES - 1)


def test_short_of_memory_the_engine_keeps_one_copy_of_the_weights(
    bf16_llama_dir, monkeypatch, caplog
):
    # A model that fills most of the RAM (a 7B model on a 24 GB machine) must still load:
    # no packed second copy, the kernels still on for single-sequence decode.
    from kakehashi.engine import memory

    prompts = [list(range(3, 40)), list(range(50, 60)), [9] * 30]
    packed_engine = LLMEngine(
        load_model(bf16_llama_dir, dtype=torch.bfloat16),
        Tokenizer.from_dir(bf16_llama_dir),
        EngineConfig(max_model_len=256),
    )
    want = _generate(packed_engine, prompts)

    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1024**3)
    model = load_model(bf16_llama_dir, dtype=torch.bfloat16)
    with caplog.at_level("WARNING", logger="kakehashi.engine.memory"):
        engine = LLMEngine(
            model, Tokenizer.from_dir(bf16_llama_dir), EngineConfig(max_model_len=256)
        )
    assert "not packing weights" in caplog.text
    projections = [m for m in model.modules() if isinstance(m, Projection)]
    assert all(m.amx_weight is None and m.onednn_weight is None for m in projections)
    assert engine.kv_cache.cpu_kernels and model.fused_decode
    assert model.fused_decode_max_rows == 3  # batches of more go through torch's matmul
    got = _generate(engine, prompts)
    for rid, tokens in want.items():
        assert len(got[rid]) == len(tokens) == 10
        for (tok_a, lp_a, _), (tok_b, lp_b, _) in zip(got[rid], tokens, strict=True):
            assert tok_a == tok_b or abs(lp_a - lp_b) < 0.05
