"""The tiny model writer: complete, deterministic, and loadable by transformers and by us."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kakehashi.engine.models.loader import load_model, read_model_config
from kakehashi.engine.models.tiny import (
    TINY_RANDOM_DIR_NAME,
    make_tiny_model,
    tiny_random_model_dir,
)

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _digests(model_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    }


def test_writes_a_complete_directory(tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> None:
    for model_dir, arch, model_type in [
        (tiny_llama_dir, "LlamaForCausalLM", "llama"),
        (tiny_qwen2_dir, "Qwen2ForCausalLM", "qwen2"),
    ]:
        assert {p.name for p in model_dir.iterdir()} == FILES
        config = json.loads((model_dir / "config.json").read_text())
        assert config["architectures"] == [arch]
        assert config["model_type"] == model_type
        assert config["torch_dtype"] == "float32"
        assert json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]


def test_same_arguments_give_identical_bytes_even_in_another_process(
    tmp_path: Path, tiny_qwen2_dir: Path
) -> None:
    script = (
        "import sys; from pathlib import Path; "
        "from kakehashi.engine.models.tiny import make_tiny_model; "
        "make_tiny_model(Path(sys.argv[1]), arch='qwen2')"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], check=True)
    assert _digests(tmp_path / "again") == _digests(tiny_qwen2_dir)


def test_seed_changes_weights_but_not_tokenizer(tmp_path: Path, tiny_llama_dir: Path) -> None:
    other = make_tiny_model(tmp_path, arch="llama", seed=1)
    ours, theirs = _digests(tiny_llama_dir), _digests(other)
    assert ours["model.safetensors"] != theirs["model.safetensors"]
    assert ours["tokenizer.json"] == theirs["tokenizer.json"]


def test_transformers_loads_what_we_write(tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> None:
    for model_dir, tied in [(tiny_llama_dir, False), (tiny_qwen2_dir, True)]:
        config = AutoConfig.from_pretrained(model_dir)
        assert config.num_hidden_layers == 2 and config.num_key_value_heads == 2
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        assert len(tokenizer) == config.vocab_size == 2048
        ids = tokenizer("日本語と English", return_tensors="pt").input_ids
        assert model(ids).logits.shape == (1, ids.shape[1], 2048)


def test_weights_have_hf_names_and_requested_dtype(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, arch="qwen2", dtype="bfloat16", vocab_size=512)
    assert json.loads((model_dir / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        assert {handle.get_tensor(n).dtype for n in names} == {torch.bfloat16}
    assert "model.layers.1.self_attn.k_proj.bias" in names
    assert "model.layers.0.mlp.gate_proj.weight" in names
    assert "lm_head.weight" not in names  # tied to the embedding


def test_vocabulary_is_filled(tiny_llama_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert len(tokenizer.get_vocab()) == 2048


def test_tiny_random_model_is_made_once_and_loads(tmp_path: Path) -> None:
    target = tiny_random_model_dir(tmp_path)
    assert target == tmp_path / "models" / TINY_RANDOM_DIR_NAME
    config = read_model_config(target)
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (128, 4, 4096)
    before = _digests(target)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert tiny_random_model_dir(tmp_path) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert _digests(target) == before
    assert [p.name for p in target.parent.iterdir()] == [TINY_RANDOM_DIR_NAME]  # no staging left
    assert load_model(target).config.hidden_size == 128


def test_tiny_random_model_survives_concurrent_creation(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; "
        "from kakehashi.engine.models.tiny import tiny_random_model_dir; "
        "print(tiny_random_model_dir(Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    target = tmp_path / "models" / TINY_RANDOM_DIR_NAME
    assert outputs == [str(target)] * 2
    assert [p.name for p in target.parent.iterdir()] == [TINY_RANDOM_DIR_NAME]
    assert {p.name for p in target.iterdir()} == FILES
    assert load_model(target).config.num_layers == 4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tokenizer_round_trips_mixed_text(arch: str, tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, arch=arch, vocab_size=512)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "print('こんにちは') # 你好 🎉"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
