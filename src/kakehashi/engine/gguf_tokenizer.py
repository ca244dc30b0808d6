"""A ``tokenizers`` Tokenizer and a chat template rebuilt from a GGUF file's metadata.

A GGUF carries no ``tokenizer.json`` (a few embed one as ``tokenizer.huggingface.json``, used
as is). It lists the vocabulary (``tokenizer.ggml.tokens``), what kind each token is, and either
the BPE merges (``gpt2``: byte-level BPE, as GPT-2, Llama 3, Qwen2 and SmolLM use) or a score per
token (``llama``: a SentencePiece BPE vocabulary with byte fallback, as Llama 2 and Mistral use).
``tokenizer.ggml.pre`` names how text is split before BPE; each name stands for the split of a
known tokenizer, which :data:`_PRE_TOKENIZERS` spells out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gguf import Keys, TokenType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from kakehashi.engine.chat_template import ChatTemplate, ChatTemplateError
from kakehashi.engine.models.registry import UnsupportedModelError
from kakehashi.engine.tokenizer import Tokenizer

T = Keys.Tokenizer


class Metadata(Protocol):
    """Read access to GGUF metadata (:class:`~kakehashi.engine.models.gguf_file.GGUFFile`)."""

    def get(self, key: str, default: Any = None) -> Any: ...


class GGUFTokenizerError(UnsupportedModelError):
    """The file's tokenizer is of a kind we cannot rebuild."""


_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # StarCoder's family (SmolLM among it) splits every digit off before GPT-2's split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


# tokenizer.ggml.pre -> (pre-tokenizer, whether BPE skips merging words already in the vocab)
_PRE_TOKENIZERS: dict[str, tuple[Any, bool]] = {
    "default": (_gpt2, False),
    "gpt-2": (_gpt2, False),
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "refact": (_digits_then_gpt2, False),
    "llama-bpe": (lambda: _split_then_bytes(_LLAMA3_SPLIT), True),
    "llama3": (lambda: _split_then_bytes(_LLAMA3_SPLIT), True),
    "smaug-bpe": (lambda: _split_then_bytes(_LLAMA3_SPLIT), True),
    "falcon3": (lambda: _split_then_bytes(_LLAMA3_SPLIT), True),
    "qwen2": (lambda: _split_then_bytes(_QWEN2_SPLIT), False),
    "deepseek-r1-qwen": (lambda: _split_then_bytes(_QWEN2_SPLIT), False),
    "tekken": (lambda: _split_then_bytes(_TEKKEN_SPLIT), False),
}
_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN)


def tokenizer_from_gguf(meta: Metadata) -> Tokenizer:
    """The file's tokenizer, with its special tokens, bos/eos ids and add-bos behaviour."""
    kind = meta.get(T.MODEL)
    tokens: list[str] = meta.get(T.LIST) or []
    if not tokens:
        raise GGUFTokenizerError("the file has no vocabulary (tokenizer.ggml.tokens)")
    embedded = meta.get(T.HF_JSON)
    if embedded:
        backend = BackendTokenizer.from_str(embedded)
        byte_level = "ByteLevel" in embedded
    elif kind == "gpt2":
        backend, byte_level = _byte_level_bpe(meta, tokens), True
    elif kind == "llama":
        backend, byte_level = _sentencepiece_bpe(meta, tokens), False
    else:
        raise GGUFTokenizerError(
            f"tokenizer model {kind!r} is not supported (supported: gpt2, llama)"
        )
    if not embedded:
        _add_typed_tokens(backend, tokens, meta.get(T.TOKEN_TYPE) or [])
        _add_bos_eos(backend, tokens, meta, default_bos=kind == "llama")
    special_ids = [i for i, t in backend.get_added_tokens_decoder().items() if t.special]
    eos = [meta.get(key) for key in (T.EOS_ID, T.EOT_ID, T.EOM_ID)]
    return Tokenizer(
        backend,
        special_ids=special_ids,
        eos_token_ids=[int(i) for i in eos if i is not None],
        bos_token_id=meta.get(T.BOS_ID),
        byte_level=byte_level,
    )


def chat_template_from_gguf(meta: Metadata, name: str) -> ChatTemplate:
    """``tokenizer.chat_template``, with the bos/eos token strings it may refer to."""
    source = meta.get(T.CHAT_TEMPLATE)
    if not source:
        raise ChatTemplateError(
            f"the model {name} has no chat template (tokenizer.chat_template); "
            "use the completions API with a raw prompt instead"
        )
    tokens: list[str] = meta.get(T.LIST) or []
    special = {}
    for field, key in (("bos_token", T.BOS_ID), ("eos_token", T.EOS_ID), ("unk_token", T.UNK_ID)):
        index = meta.get(key)
        if index is not None and 0 <= index < len(tokens):
            special[field] = tokens[index]
    return ChatTemplate(str(source), special)


def _byte_level_bpe(meta: Metadata, tokens: Sequence[str]) -> BackendTokenizer:
    merges = [tuple(m.split(" ", 1)) for m in meta.get(T.MERGES) or []]
    pre = meta.get(T.PRE) or "default"
    if pre not in _PRE_TOKENIZERS:
        raise GGUFTokenizerError(
            f"pre-tokenizer {pre!r} is not supported (supported: "
            f"{', '.join(sorted(_PRE_TOKENIZERS))})"
        )
    make_pre, ignore_merges = _PRE_TOKENIZERS[pre]
    model = models.BPE(
        vocab=_first_ids(tokens), merges=merges, ignore_merges=ignore_merges, fuse_unk=False
    )
    backend = BackendTokenizer(model)
    backend.pre_tokenizer = make_pre()
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(meta: Metadata, tokens: Sequence[str]) -> BackendTokenizer:
    scores: list[float] = meta.get(T.SCORES) or [0.0] * len(tokens)
    given = meta.get(T.MERGES)
    merges = [tuple(m.split(" ", 1)) for m in given] if given else _merges_by_score(tokens, scores)
    unk = meta.get(T.UNK_ID)
    model = models.BPE(
        vocab=_first_ids(tokens),
        merges=merges,
        unk_token=tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = BackendTokenizer(model)
    prefix = bool(meta.get(T.ADD_PREFIX, True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_by_score(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two
    tokens, the best-scoring result first (a higher score is a piece learned earlier); among
    the splits of one token, the longer left piece first."""
    ids = _first_ids(tokens)
    found: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=False):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                found.append((-score, -len(left), ids[token], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _first_ids(tokens: Sequence[str]) -> dict[str, int]:
    """token -> id; a token listed twice keeps its first id."""
    ids: dict[str, int] = {}
    for index, token in enumerate(tokens):
        ids.setdefault(token, index)
    return ids


def _add_typed_tokens(
    backend: BackendTokenizer, tokens: Sequence[str], types: Sequence[int]
) -> None:
    """Control and unknown tokens become special tokens, user-defined ones added tokens:
    either way text that spells them becomes that one token, as llama.cpp matches them."""
    special, added = [], []
    for token, kind in zip(tokens, types, strict=False):
        if kind in _SPECIAL_TYPES and token:
            special.append(AddedToken(token, special=True, normalized=False))
        elif kind == TokenType.USER_DEFINED and token:
            added.append(AddedToken(token, special=False, normalized=False))
    if special:
        backend.add_special_tokens(special)
    if added:
        backend.add_tokens(added)


def _add_bos_eos(
    backend: BackendTokenizer, tokens: Sequence[str], meta: Metadata, *, default_bos: bool
) -> None:
    """A post-processor that adds BOS (and EOS) where the file asks for it.

    Without the flag, SentencePiece vocabularies get a BOS and byte-level ones do not, as
    llama.cpp decides.
    """

    def token(key: str, wanted: bool) -> tuple[str, int] | None:
        index = meta.get(key)
        if not wanted or index is None or not 0 <= index < len(tokens):
            return None
        return tokens[index], int(index)

    add_bos, add_eos = meta.get(T.ADD_BOS), meta.get(T.ADD_EOS)
    bos = token(T.BOS_ID, default_bos if add_bos is None else bool(add_bos))
    eos = token(T.EOS_ID, bool(add_eos))
    if bos is None and eos is None:
        return
    head = f"{bos[0]}:0 " if bos else ""
    tail = f" {eos[0]}:0" if eos else ""
    backend.post_processor = processors.TemplateProcessing(
        single=f"{head}$A:0{tail}",
        pair=f"{head}$A:0{tail} {head.replace(':0', ':1')}$B:1{tail.replace(':0', ':1')}",
        special_tokens=[t for t in (bos, eos) if t is not None],
    )
