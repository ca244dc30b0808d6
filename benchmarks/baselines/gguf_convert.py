"""Convert a bf16 Llama/Qwen2 Hugging Face checkpoint to a BF16 GGUF file for llama.cpp.

Runs inside the llama.cpp venv: it needs only ``numpy`` and the ``gguf`` package (no torch), so
safetensors are read directly (an 8-byte header length, a JSON header, raw little-endian data).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# Hugging Face tensor name (inside "model.layers.N.") -> llama.cpp name (inside "blk.N.").
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_ARCHES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# The pre-tokenizer (split regex) llama.cpp should use, by architecture.
_PRE_TOKENIZERS = {"llama": "gpt-2", "qwen2": "qwen2"}


def read_safetensors(path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(name, safetensors dtype, array) for every tensor; bf16 comes back as raw uint16."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (header_len,) = struct.unpack("<Q", bytes(raw[:8]))
    header = json.loads(bytes(raw[8 : 8 + header_len]))
    base = 8 + header_len
    numpy_dtypes = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        data = raw[base + begin : base + end].view(numpy_dtypes[info["dtype"]])
        yield name, info["dtype"], data.reshape(info["shape"])


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Exact widening of raw bf16 bits to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def rope_interleave(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorder a q/k projection's output rows from Hugging Face's rotary layout to llama.cpp's.

    Hugging Face rotates dimension ``i`` of a head together with ``i + D/2`` ("rotate half");
    llama.cpp's llama architecture rotates ``2i`` with ``2i + 1``. So within each head, row
    ``i`` moves to ``2i`` and row ``i + D/2`` to ``2i + 1``.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return (
        weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def convert(model_dir: Path, out_path: Path) -> Path:
    """Write ``out_path`` (BF16 matrices, F32 norms and biases) from ``model_dir``."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = _ARCHES[config["architectures"][0]]
    tmp_path = out_path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp_path), arch)
    _add_hparams(writer, arch, config, model_dir.name)
    _add_tokenizer(writer, arch, config, model_dir)
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, dtype, data in read_safetensors(path):
            if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
                data = rope_interleave(data, heads)
            gguf_name = _gguf_name(name)
            if data.ndim == 1:  # norms and biases stay float32 in llama.cpp
                writer.add_tensor(gguf_name, bf16_to_f32(data) if dtype == "BF16" else data)
            elif dtype == "BF16":
                writer.add_tensor(
                    gguf_name, np.ascontiguousarray(data), raw_dtype=gguf.GGMLQuantizationType.BF16
                )
            else:
                raise ValueError(f"{name}: expected bf16 weights, got {dtype}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp_path.rename(out_path)
    return out_path


def _gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    prefix, layer, rest = hf_name.split(".", 3)[1:4] if hf_name.startswith("model.") else ("",) * 3
    if prefix == "layers" and rest in _LAYER_NAMES:
        return f"blk.{layer}.{_LAYER_NAMES[rest]}"
    raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")


def _add_hparams(writer: gguf.GGUFWriter, arch: str, config: dict[str, Any], name: str) -> None:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(
    writer: gguf.GGUFWriter, arch: str, config: dict[str, Any], model_dir: Path
) -> None:
    """The byte-level BPE as llama.cpp's "gpt2" tokenizer, padded to the embedding size."""
    raw = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    by_id: dict[int, str] = {i: t for t, i in raw["model"]["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in raw.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = (
            gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        )
    tokens, types = [], []
    for i in range(config["vocab_size"]):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(kinds.get(i, gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_PRE_TOKENIZERS[arch])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(int(config["bos_token_id"]))
    writer.add_eos_token_id(int(config["eos_token_id"]))
    writer.add_add_bos_token(arch == "llama")
