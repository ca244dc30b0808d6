"""Random-weight checkpoints in the real shapes of the models the benchmarks run.

Speed does not depend on the values of the weights, only on their shapes and dtype, so the
benchmarks generate their models instead of downloading them. The tokenizer (a byte-level BPE
from :func:`kakehashi.engine.models.tiny.make_tiny_model`) is smaller than the embedding, the
way real checkpoints pad their vocabularies; the embedding and LM head have the real size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from kakehashi.engine.models.tiny import make_tiny_model, random_weights

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench-models"
TOKENIZER_VOCAB = 8192
_LAYOUT_VERSION = 1  # bump when the generated files change, to rebuild cached copies


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The architecture hyper-parameters of one real checkpoint."""

    name: str
    arch: Literal["llama", "qwen2"]
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def qkv_bias(self) -> bool:
        return self.arch == "qwen2"

    def matmul_params(self) -> int:
        """Weights every generated token multiplies by: all layers plus the LM head."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (2 * self.num_heads + 2 * self.num_kv_heads)  # q, o, k, v
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp) + self.vocab_size * h

    def kv_bytes_per_token(self) -> int:
        """bf16 keys and values one token of context holds in the cache, all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2

    def attention_flops(self, context: float) -> float:
        """FLOPs of one query token's attention over ``context`` tokens (QK^T and PV)."""
        return 4 * self.num_layers * self.num_heads * self.head_dim * context

    def total_params(self) -> int:
        """Every parameter of the checkpoint (tied embeddings counted once)."""
        h = self.hidden_size
        per_layer_small = 2 * h + (
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        )
        total = self.matmul_params() + self.num_layers * per_layer_small + h
        return total if self.tie_word_embeddings else total + self.vocab_size * h


SHAPES: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(
        name="smollm2-135m",
        arch="llama",
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
    "qwen2.5-0.5b": ModelShape(
        name="qwen2.5-0.5b",
        arch="qwen2",
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
}


def model_dir(shape: ModelShape, *, cache_dir: Path = CACHE_DIR) -> Path:
    """The bf16 checkpoint directory of ``shape``, generated (atomically) on first use."""
    target = cache_dir / f"{shape.name}-bf16-v{_LAYOUT_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        _write_checkpoint(shape, staging)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_checkpoint(shape: ModelShape, out_dir: Path) -> None:
    # A tiny model of the same family gives the tokenizer files and a config to start from.
    make_tiny_model(out_dir, arch=shape.arch, vocab_size=TOKENIZER_VOCAB, dtype="bfloat16")
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    config.update(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_word_embeddings,
        torch_dtype="bfloat16",
    )
    if shape.arch == "qwen2":
        config["max_window_layers"] = shape.num_layers
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generator = torch.Generator().manual_seed(0)
    tensors = {name: t.to(torch.bfloat16) for name, t in random_weights(config, generator)}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def describe(shape: ModelShape) -> dict[str, Any]:
    """A short summary for the report."""
    return {
        "params": shape.total_params(),
        "matmul_params": shape.matmul_params(),
        "weight_bytes_per_token_bf16": 2 * shape.matmul_params(),
    }
