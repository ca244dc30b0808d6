"""Our model code against Hugging Face transformers on the same random weights."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from reference_context import PackedReferenceContext, ReferenceContext
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from kakehashi.engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, WeightLoadError
from kakehashi.engine.models.loader import (
    ModelSourceError,
    load_model,
    read_model_config,
    resolve_model_source,
)
from kakehashi.engine.models.registry import UnknownArchitectureError, UnsupportedModelError
from kakehashi.engine.models.tiny import make_tiny_model
from kakehashi.engine.tokenizer import Tokenizer

ATOL = 1e-4
PREFILL, DECODE_STEPS = 20, 5


def _hf_model(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _prompt(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _assert_parity(model_dir: Path) -> None:
    ours = load_model(model_dir, dtype=torch.float32)
    theirs = _hf_model(model_dir)
    ids = _prompt(ours.config.vocab_size, PREFILL, seed=1)

    ctx = ReferenceContext()
    our_logits = ours.compute_logits(ours(ids, torch.arange(PREFILL), ctx))
    out = theirs(ids[None], use_cache=True)
    torch.testing.assert_close(our_logits, out.logits[0], atol=ATOL, rtol=0)

    cache = out.past_key_values
    for step in range(DECODE_STEPS):
        token = our_logits[-1].argmax().reshape(1)
        position = torch.tensor([PREFILL + step])
        our_logits = ours.compute_logits(ours(token, position, ctx))
        out = theirs(token[None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        torch.testing.assert_close(our_logits, out.logits[0], atol=ATOL, rtol=0)


def test_llama_matches_transformers(tiny_llama_dir: Path) -> None:
    _assert_parity(tiny_llama_dir)


def test_qwen2_matches_transformers(tiny_qwen2_dir: Path) -> None:
    _assert_parity(tiny_qwen2_dir)


@pytest.mark.parametrize(
    "rope_scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_matches_transformers(tmp_path: Path, rope_scaling: dict) -> None:
    # head_dim 64 so that the llama3 scaling has low, medium and high frequency bands.
    model_dir = make_tiny_model(
        tmp_path,
        arch="llama",
        hidden_size=128,
        num_heads=2,
        num_kv_heads=1,
        vocab_size=512,
        rope_scaling=rope_scaling,
    )
    _assert_parity(model_dir)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_table_gives_the_bits_of_computing_each_position(dtype: torch.dtype) -> None:
    from kakehashi.engine.models.llama import RotaryEmbedding

    scaling = {"rope_type": "linear", "factor": 2.0}
    rope = RotaryEmbedding(64, 10000.0, scaling)
    # out of order, repeated, then past the first table and past its doubling
    for positions in ([3, 0, 3, 255], [256, 7], [1500], [0]):
        p = torch.tensor(positions)
        cos, signed_sin = rope(p, dtype)
        freqs = p.float()[:, None] * rope.inv_freq[None, :]
        want_cos = torch.cat((freqs.cos(), freqs.cos()), -1).to(dtype)[:, None]
        want_sin = torch.cat((-freqs.sin(), freqs.sin()), -1).to(dtype)[:, None]
        assert cos.shape == signed_sin.shape == (len(positions), 1, 64)
        assert torch.equal(cos, want_cos) and torch.equal(signed_sin, want_sin)
    assert rope(torch.tensor([], dtype=torch.int64), dtype)[0].shape == (0, 1, 64)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_batch_equals_separate_runs(
    arch: str, tiny_llama_dir: Path, tiny_qwen2_dir: Path
) -> None:
    model = load_model(tiny_llama_dir if arch == "llama" else tiny_qwen2_dir)
    first, second = _prompt(model.config.vocab_size, 13, 2), _prompt(model.config.vocab_size, 7, 3)

    def alone(ids: torch.Tensor) -> torch.Tensor:
        return model.compute_logits(model(ids, torch.arange(len(ids)), ReferenceContext()))

    packed_ctx = PackedReferenceContext(2)
    packed_ctx.set_lengths([13, 7])
    packed = model.compute_logits(
        model(
            torch.cat((first, second)), torch.cat((torch.arange(13), torch.arange(7))), packed_ctx
        )
    )
    torch.testing.assert_close(packed[:13], alone(first), atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[13:], alone(second), atol=1e-5, rtol=0)

    # A mixed step: sequence 0 decodes one token while sequence 1 prefills the rest of itself.
    packed_ctx.set_lengths([1, 4])
    step_ids = torch.tensor([5, 6, 7, 8, 9])
    step = model.compute_logits(model(step_ids, torch.tensor([13, 7, 8, 9, 10]), packed_ctx))
    torch.testing.assert_close(
        step[0], alone(torch.cat((first, step_ids[:1])))[-1], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        step[1:], alone(torch.cat((second, step_ids[1:])))[-4:], atol=1e-5, rtol=0
    )


def test_loaded_model_is_inference_ready(tiny_qwen2_dir: Path) -> None:
    model = load_model(tiny_qwen2_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.layers[0].self_attn.qkv_proj.bias is not None
    assert model.layers[0].self_attn.o_proj.bias is None


def test_bfloat16_checkpoint_loads_in_its_own_dtype(tmp_path: Path) -> None:
    model = load_model(make_tiny_model(tmp_path, dtype="bfloat16", vocab_size=512))
    assert isinstance(model, LlamaForCausalLM)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        hidden = model(torch.tensor([1, 2, 3]), torch.arange(3), ReferenceContext())
        logits = model.compute_logits(hidden)
    assert hidden.dtype == torch.bfloat16
    assert logits.dtype == torch.bfloat16 and logits.shape == (3, 512)  # widened by the sampler
    assert load_model(tmp_path, dtype=torch.float32).embed_tokens.weight.dtype == torch.float32


# --- loader and registry ----------------------------------------------------------------------


def _edit_config(model_dir: Path, name: str, **changes: object) -> None:
    path = model_dir / name
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def test_read_model_config(tiny_llama_dir: Path, tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    llama = read_model_config(tiny_llama_dir)
    assert llama.architecture == "LlamaForCausalLM"
    assert (llama.num_heads, llama.num_kv_heads, llama.head_dim) == (4, 2, 16)
    assert not llama.attention_bias and not llama.tie_word_embeddings
    tokenizer = Tokenizer.from_dir(tiny_llama_dir)
    assert llama.eos_token_ids == tokenizer.eos_token_ids  # [eot, end_of_text] from generation
    assert llama.bos_token_id == tokenizer.bos_token_id
    qwen = read_model_config(tiny_qwen2_dir)
    assert qwen.attention_bias and qwen.tie_word_embeddings

    # Without generation_config.json the (single int) eos of config.json is used.
    model_dir = _copy(tiny_llama_dir, tmp_path)
    (model_dir / "generation_config.json").unlink()
    assert read_model_config(model_dir).eos_token_ids == tokenizer.eos_token_ids[:1]


def test_rope_parameters_of_transformers_v5_configs(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_dir, tmp_path)
    scaling = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    _edit_config(model_dir, "config.json", rope_theta=None, rope_scaling=None)
    _edit_config(model_dir, "config.json", rope_parameters=scaling)
    config = read_model_config(model_dir)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling is not None and config.rope_scaling["factor"] == 2.0
    _edit_config(model_dir, "config.json", rope_parameters={"rope_type": "yarn", "rope_theta": 1.0})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        read_model_config(model_dir)


def test_unknown_architecture_is_named(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_dir, tmp_path)
    _edit_config(model_dir, "config.json", architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(UnknownArchitectureError, match="GPTNeoXForCausalLM") as info:
        load_model(model_dir)
    assert isinstance(info.value, ValueError)
    assert "LlamaForCausalLM" in str(info.value)  # tells what is supported


def test_mistral_without_sliding_window_is_llama(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_dir, tmp_path)
    _edit_config(
        model_dir, "config.json", architectures=["MistralForCausalLM"], sliding_window=None
    )
    assert isinstance(load_model(model_dir), LlamaForCausalLM)
    _edit_config(model_dir, "config.json", sliding_window=128)
    with pytest.raises(UnsupportedModelError, match="sliding window"):
        load_model(model_dir)


@torch.no_grad()
def test_sharded_checkpoint_loads_the_same(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    names = sorted(tensors)
    (model_dir / "model.safetensors").unlink()
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        save_file(
            {n: tensors[n] for n in part}, model_dir / f"model-0000{i + 1}-of-00002.safetensors"
        )
    ids = _prompt(2048, 9, seed=4)
    sharded, whole = load_model(model_dir), load_model(tiny_llama_dir)
    a = sharded.compute_logits(sharded(ids, torch.arange(9), ReferenceContext()))
    b = whole.compute_logits(whole(ids, torch.arange(9), ReferenceContext()))
    assert torch.equal(a, b)


def test_missing_or_unknown_tensors_are_errors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(WeightLoadError, match=r"layers\.1\.self_attn\.qkv_proj\.weight\[v\]"):
        load_model(model_dir)
    tensors["model.layers.1.self_attn.v_proj.weight"] = torch.zeros(32, 64)
    tensors["model.layers.0.self_attn.rope_gate.weight"] = torch.zeros(1)
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(WeightLoadError, match="rope_gate"):
        load_model(model_dir)


def test_resolve_model_source_local_dir(tiny_llama_dir: Path) -> None:
    assert resolve_model_source(str(tiny_llama_dir)) == tiny_llama_dir


def test_resolve_model_source_without_hub_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ModelSourceError, match="local model directory"):
        resolve_model_source("someone/some-model")


def test_resolve_model_source_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    # Offline mode: the hub client refuses to open connections, as on a machine without one.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSourceError, match="local model directory") as info:
        resolve_model_source("someone/no-such-model")
    assert isinstance(info.value, ValueError)
