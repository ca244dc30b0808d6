"""Tokenizer against transformers, exact token bytes, and the incremental detokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers
from transformers import AutoTokenizer

from kakehashi.engine.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox.",
    "吾輩は猫である。名前はまだ無い。",
    "人工智能正在改变世界 🚀 and 😀🎉 emoji",
    "def f(x):\n    return x * 2\n\n\ttabs  and   spaces",
    "café naïve Zürich — “quotes” ₿ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_qwen2_dir


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(model_dir)


def _chat_text(model_dir: Path) -> str:
    if "qwen2" in model_dir.name:
        return "<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\n"
    return "<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|>"


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_encode_and_decode_match_transformers(
    model_dir: Path, tokenizer: Tokenizer, add_special_tokens: bool
) -> None:
    hf = AutoTokenizer.from_pretrained(model_dir)
    for text in [*TEXTS, _chat_text(model_dir)]:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        assert ids == hf.encode(text, add_special_tokens=add_special_tokens), text
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip
            )
    assert tokenizer.vocab_size == len(hf)


def test_special_token_strings_become_their_ids(model_dir: Path, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(_chat_text(model_dir))
    special = [i for i in ids if tokenizer.is_special(i)]
    assert len(special) >= 2
    assert all(tokenizer.token_text(i).startswith("<|") for i in special)
    assert not any(tokenizer.is_special(i) for i in tokenizer.encode("plain text"))


def test_bos_and_eos(tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> None:
    llama, qwen = Tokenizer.from_dir(tiny_llama_dir), Tokenizer.from_dir(tiny_qwen2_dir)
    assert llama.token_text(llama.bos_token_id) == "<|begin_of_text|>"
    assert llama.encode("hi", add_special_tokens=True)[0] == llama.bos_token_id
    assert [llama.token_text(i) for i in llama.eos_token_ids] == ["<|eot_id|>", "<|end_of_text|>"]
    assert qwen.bos_token_id is None
    assert [qwen.token_text(i) for i in qwen.eos_token_ids] == ["<|im_end|>", "<|endoftext|>"]


def test_token_bytes_concatenate_to_the_utf8_text(tokenizer: Tokenizer) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_token_text_of_partial_characters(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀")
    assert len(ids) > 1, "the emoji should be split across tokens in this tiny vocabulary"
    texts = [tokenizer.token_text(i) for i in ids]
    assert all(t.startswith("bytes:\\x") for t in texts)
    joined = b"".join(bytes.fromhex(t[len("bytes:") :].replace("\\x", "")) for t in texts)
    assert joined.decode("utf-8") == "😀"
    hello = tokenizer.encode("Hello")[0]
    assert tokenizer.token_text(hello) == tokenizer.token_bytes(hello).decode("utf-8")
    assert "Hello".startswith(tokenizer.token_text(hello))
    assert tokenizer.token_bytes(10**9) == b""


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style vocabulary: ▁ for spaces and <0xNN> byte-fallback pieces."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "▁hell", "▁hello", "▁w"]
    vocab.update({p: len(vocab) + i for i, p in enumerate(pieces)})
    merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("▁he", "ll"), ("▁hell", "o"), ("▁", "w")]
    backend = BackendTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens(["<s>", "</s>"])
    out = tmp_path_factory.mktemp("sentencepiece")
    backend.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def test_sentencepiece_style_token_bytes(sentencepiece_dir: Path) -> None:
    tokenizer = Tokenizer.from_dir(sentencepiece_dir)
    ids = tokenizer.encode("hello world 日本")
    assert tokenizer.token_bytes(ids[0]) == b" hello"
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == " hello world 日本".encode()
    assert tokenizer.decode(ids) == "hello world 日本"
    byte_pieces = [i for i in ids if tokenizer.token_text(i).startswith("bytes:")]
    assert len(byte_pieces) == 6  # 日本 is two 3-byte characters, all byte fallback
    assert tokenizer.token_text(tokenizer.encode("</s>")[-1]) == "</s>"
    assert tokenizer.eos_token_ids == (2,) and tokenizer.bos_token_id == 1


# --- IncrementalDetokenizer -------------------------------------------------------------------


def _stream(tokenizer: Tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> list[str]:
    """Feed ids one by one, collecting take_text() after each, then finish()."""
    detok = IncrementalDetokenizer(tokenizer, stop)
    chunks = []
    for token_id in ids:
        detok.add(token_id)
        chunks.append(detok.take_text())
    chunks.append(detok.finish())
    assert "".join(chunks) == detok.text
    return chunks


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_streams_whole_characters(tokenizer: Tokenizer, text: str) -> None:
    chunks = _stream(tokenizer, tokenizer.encode(text))
    assert "".join(chunks) == text
    assert "\ufffd" not in "".join(chunks)


def test_detokenizer_holds_partial_emoji_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a😀")
    chunks = _stream(tokenizer, ids)
    assert "😀" in chunks  # released in one piece, never as a half character
    assert chunks.index("😀") == len(ids) - 1


def test_detokenizer_truncated_utf8_becomes_replacement_char(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok😀")
    detok = IncrementalDetokenizer(tokenizer)
    for token_id in ids[:-1]:  # drop the token with the emoji's last byte
        detok.add(token_id)
    assert detok.take_text() == "ok"
    assert detok.finish() == "\ufffd"
    assert detok.text == "ok\ufffd"


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("Hello world. Goodbye", ("world",), "Hello "),
        ("今日はとても良い天気ですね。明日は", ("天気",), "今日はとても良い"),
        ("one two three", ("two", "one two t"), "one "),  # the first completed wins
        ("one two three", ("e two", "two"), "on"),  # same end: the longer (earlier) wins
        ("A 🚀 launch 🚀 again", ("🚀 l",), "A "),
        ("no stop here", ("zzz",), "no stop here"),
    ],
)
def test_stop_strings_across_tokens(
    tokenizer: Tokenizer, text: str, stop: tuple[str, ...], expected: str
) -> None:
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, stop)
    released = []
    stopped_at = None
    for n, token_id in enumerate(ids):
        if detok.add(token_id):
            stopped_at = n
        released.append(detok.take_text())
        assert not any(s in "".join(released) for s in stop)
    released.append(detok.finish())
    assert "".join(released) == expected == detok.text
    assert (stopped_at is not None) == (expected != text)
    assert detok.stopped == (expected != text)


def test_stop_string_split_exactly_across_two_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ab 東京駅から新幹線")
    # Choose a stop string made of the tail of one token and the head of the next.
    first, second = tokenizer.token_text(ids[-2]), tokenizer.token_text(ids[-1])
    stop = first[-1] + second[0]
    detok = IncrementalDetokenizer(tokenizer, [stop])
    results = [detok.add(i) for i in ids]
    assert results[-1] is True and not any(results[:-1])
    text = "ab 東京駅から新幹線"
    assert detok.take_text() + detok.finish() == text[: text.index(stop)]


def test_stop_prefix_that_diverges_is_released(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello Help Hello")
    detok = IncrementalDetokenizer(tokenizer, ["Hello World"])
    out = []
    for token_id in ids:
        assert detok.add(token_id) is False
        out.append(detok.take_text())
    # "Hello " could start the stop string, so it is held back until "Help" rules it out.
    assert "".join(out) in ("Hello Help ", "Hello Help")
    assert "".join(out) + detok.finish() == "Hello Help Hello"


def test_held_back_text_released_chunk_by_chunk(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, ["END"])
    for token_id in tokenizer.encode("xx EN"):
        detok.add(token_id)
    assert detok.take_text() == "xx "
    for token_id in tokenizer.encode("D"):
        assert detok.add(token_id) is True
    assert detok.take_text() == ""
    for token_id in tokenizer.encode("after"):
        assert detok.add(token_id) is False
    assert detok.finish() == ""
    assert detok.text == "xx "


def test_special_tokens_skipped_or_kept(model_dir: Path, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(_chat_text(model_dir))
    skipped = IncrementalDetokenizer(tokenizer)
    kept = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    for token_id in ids:
        skipped.add(token_id)
        kept.add(token_id)
    assert skipped.finish() == tokenizer.decode(ids, skip_special_tokens=True)
    assert kept.finish() == _chat_text(model_dir)
