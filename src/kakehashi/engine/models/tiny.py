"""Tiny random-weight models of real architectures, written as Hugging Face model directories.

Tests, benchmarks and trials need a model without the internet. :func:`make_tiny_model` writes
everything a real checkpoint has (``config.json``, ``generation_config.json``,
``model.safetensors`` with the Hugging Face tensor names, ``tokenizer.json`` with a byte-level
BPE trained here in about a second, ``tokenizer_config.json`` with special tokens and a chat
template), so both our loader and ``transformers`` load it. The same arguments always give
byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

Arch = Literal["llama", "qwen2"]
WeightDtype = Literal["float32", "bfloat16"]

TINY_RANDOM_DIR_NAME = "tiny-random-v1"

# Training text for the tiny tokenizer: varied English, Japanese, Chinese, code and symbols, so
# that multi-byte characters end up split across tokens in some places and merged in others.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A bridge connects two shores, and a good API
connects two programs. When the river is wide, the bridge must be long; when the traffic is
heavy, the bridge must be strong. Engineers measure twice and cut once.
Once upon a time there was a small server that answered questions. Every morning it woke up,
loaded its weights, and waited for requests. Some requests were short: "Hello!" Others were
long essays about history, science, cooking and music. The server read each one carefully,
thought one token at a time, and wrote back an answer.
Summaries should be short. Translations should be faithful. Code should be readable.
Tokens, tokens everywhere: the model reads tokens, the sampler picks tokens, and the client
counts tokens to pay the bill. Please keep your answers concise, accurate and polite.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 4096 65536 3.14159 2.71828 -1 +1 1e-5.
Dates: 2024-01-15, 2025-12-31T23:59:59Z. Prices: $9.99, 120 yen, 15%.
Questions: What is the capital of France? Paris. How many legs does a spider have? Eight.
Why is the sky blue? Because sunlight is scattered by the air, and blue light scatters most.
吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。
今日はとても良い天気ですね。明日は雨が降るかもしれません。傘を持って行きましょう。
東京駅から新幹線に乗って、京都まで二時間ほどかかります。お土産に八つ橋を買いました。
日本語の文章には、ひらがな、カタカナ、漢字が混ざっています。ラーメンとお寿司が好きです。
機械学習のモデルは、大量のデータから規則を学びます。推論サーバーは質問に答えます。
こんにちは、世界！ありがとうございます。よろしくお願いします。おはようございます。
橋は川の両岸をつなぎます。「かけはし」は、二つの世界をつなぐ架け橋という意味です。
人工智能正在改变世界。我们今天去公园散步吧。这个问题很有意思，我们需要仔细思考。
北京是中国的首都，上海是最大的城市。学习语言需要耐心和坚持。
大型语言模型可以回答问题、翻译文本、编写代码和总结文章。谢谢你的帮助！
天气预报说明天会下雨，请记得带伞。他每天早上喝一杯咖啡，然后开始工作。
Emoji: 😀 🎉 🚀 ❤️ 👍 🌸 🍣 🐱 🌏 ✨ — and symbols: © ® ™ € £ ¥ § ¶ • … « » ° ± × ÷ → ← ↑ ↓.
Accents: café, naïve, résumé, Zürich, São Paulo, Kraków, Ångström, façade, jalapeño.

def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def increment(self, step: int = 1) -> int:
        self.count += step
        return self.count


for index, item in enumerate(["alpha", "beta", "gamma"]):
    print(f"{index}: {item}")

function greet(name) {
  const message = `Hello, ${name}!`;
  console.log(message);
  return message;
}

SELECT id, name, created_at FROM users WHERE active = 1 ORDER BY created_at DESC LIMIT 10;
{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": true}
curl -s http://localhost:8000/v1/models -H "Authorization: Bearer sk-test"
if (x > 0 && y < 10) { return x * y; } else { return -1; }
<html><body><p class="note">Hello &amp; welcome</p></body></html>
"""

_LLAMA_SPECIAL = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
_QWEN2_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    "You can call these tools:\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|eot_id|>{% endif %}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if tools %}<|im_start|>system\n# Tools\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer pattern: contractions, letters, single digits, punctuation, spaces.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True, slots=True)
class _ArchSpec:
    """What differs between the tiny Llama and the tiny Qwen2."""

    architecture: str
    model_type: str
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str  # end of turn: what generation stops on
    extra_eos: str  # end of text: also a stop token in generation_config.json
    chat_template: str
    tie_word_embeddings: bool
    qkv_bias: bool


_SPECS: dict[str, _ArchSpec] = {
    "llama": _ArchSpec(
        architecture="LlamaForCausalLM",
        model_type="llama",
        special_tokens=_LLAMA_SPECIAL,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        extra_eos="<|end_of_text|>",
        chat_template=_LLAMA_TEMPLATE,
        tie_word_embeddings=False,
        qkv_bias=False,
    ),
    "qwen2": _ArchSpec(
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        special_tokens=_QWEN2_SPECIAL,
        bos=None,
        eos="<|im_end|>",
        extra_eos="<|endoftext|>",
        chat_template=_QWEN2_TEMPLATE,
        tie_word_embeddings=True,
        qkv_bias=True,
    ),
}


def make_tiny_model(
    out_dir: Path,
    *,
    arch: Arch = "llama",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 2048,
    max_position_embeddings: int = 4096,
    dtype: WeightDtype = "float32",
    rope_scaling: dict[str, Any] | None = None,
) -> Path:
    """Write a complete random-weight Hugging Face model directory to ``out_dir``; return it.

    ``vocab_size`` is the model's embedding size; the trained tokenizer has at most that many
    tokens (fewer if the corpus runs out of merges, as real checkpoints often pad theirs).
    """
    spec = _SPECS[arch]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(spec, arch, vocab_size)
    token_id = tokenizer.token_to_id
    _write_text(out_dir / "tokenizer.json", tokenizer.to_str(pretty=True))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(spec, tokenizer))

    eos_id, extra_eos_id = token_id(spec.eos), token_id(spec.extra_eos)
    bos_id = token_id(spec.bos) if spec.bos else extra_eos_id
    config: dict[str, Any] = {
        "architectures": [spec.architecture],
        "model_type": spec.model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if arch == "llama":
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=num_layers)
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": [eos_id, extra_eos_id], "do_sample": False},
    )

    generator = torch.Generator().manual_seed(seed)
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    tensors = {
        name: tensor.to(torch_dtype).contiguous()
        for name, tensor in random_weights(config, generator)
    }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def tiny_random_model_dir(data_dir: Path) -> Path:
    """``data_dir/models/tiny-random-v1`` (what ``--model tiny-random`` serves), generated
    (atomically) if it is not there yet."""
    target = Path(data_dir) / "models" / TINY_RANDOM_DIR_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_RANDOM_DIR_NAME}-", dir=target.parent))
    try:
        make_tiny_model(
            staging,
            arch="llama",
            hidden_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=256,
            vocab_size=4096,
            max_position_embeddings=4096,
        )
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its copy is identical, keep it.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tokenizer(spec: _ArchSpec, arch: Arch, vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    if arch == "qwen2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(vocab_size), trainer=trainer)
    if spec.bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, tokenizer.token_to_id(spec.bos))],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _corpus_lines(vocab_size: int) -> Iterator[str]:
    """The built-in corpus, then made-up words so that BPE has enough merges for the vocab."""
    yield from _CORPUS.splitlines(keepends=True)
    rng = random.Random(vocab_size)
    onsets = ["", "b", "ch", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "sh", "t", "w"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    # dict.fromkeys keeps first-seen order (a set would not be reproducible across processes).
    cjk = list(dict.fromkeys(ch for ch in _CORPUS if "\u3040" <= ch <= "\u9fff"))
    for _ in range(vocab_size // 8):
        latin = (
            "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))
            for _ in range(6)
        )
        hanzi = ("".join(rng.choices(cjk, k=rng.randint(2, 4))) for _ in range(3))
        yield " ".join([*latin, *hanzi]) + "\n"


def _tokenizer_config(spec: _ArchSpec, tokenizer: Tokenizer) -> dict[str, Any]:
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in spec.special_tokens
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": spec.bos,
        "eos_token": spec.eos,
        "pad_token": spec.extra_eos,
        "unk_token": None,
        "chat_template": spec.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def random_weights(
    config: dict[str, Any], generator: torch.Generator
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random float32 weights for a Llama or Qwen2 ``config.json`` (a dict): (Hugging Face
    tensor name, tensor) pairs, drawn in a fixed order from ``generator``."""
    qkv_bias = config["model_type"] == "qwen2"
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q_size = config["num_attention_heads"] * head_dim
    kv_size = config["num_key_value_heads"] * head_dim

    def normal(*shape: int) -> torch.Tensor:
        # std 1/sqrt(fan_in) (not the usual 0.02) keeps activations and attention scores of
        # order one, so attention is sharp and a bug anywhere shows up in the logits.
        return torch.randn(*shape, generator=generator) * shape[-1] ** -0.5

    def norm_weight() -> torch.Tensor:
        # Near one but not exactly, so a model that forgot a norm weight fails the parity test.
        return 1.0 + torch.randn(hidden, generator=generator) * 0.1

    yield "model.embed_tokens.weight", normal(config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        yield f"{prefix}.input_layernorm.weight", norm_weight()
        for name, rows in (("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size)):
            yield f"{prefix}.self_attn.{name}.weight", normal(rows, hidden)
            if qkv_bias:
                yield (
                    f"{prefix}.self_attn.{name}.bias",
                    0.1 * torch.randn(rows, generator=generator),
                )
        yield f"{prefix}.self_attn.o_proj.weight", normal(hidden, q_size)
        yield f"{prefix}.post_attention_layernorm.weight", norm_weight()
        yield f"{prefix}.mlp.gate_proj.weight", normal(inter, hidden)
        yield f"{prefix}.mlp.up_proj.weight", normal(inter, hidden)
        yield f"{prefix}.mlp.down_proj.weight", normal(hidden, inter)
    yield "model.norm.weight", norm_weight()
    if not config["tie_word_embeddings"]:
        yield "lm_head.weight", normal(config["vocab_size"], hidden)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
