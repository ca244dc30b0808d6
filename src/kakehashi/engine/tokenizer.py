"""Tokenizer (text ↔ ids, exact bytes per token) and a UTF-8 safe incremental detokenizer.

:class:`Tokenizer` wraps a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library) plus
``tokenizer_config.json``. Besides encode/decode it knows the raw bytes each token contributes,
which is what streaming and OpenAI's ``logprobs.bytes`` need: a token may be half of a
character. :class:`IncrementalDetokenizer` turns a stream of ids into text that is safe to
send: whole characters only, and nothing that might still turn out to be a stop string.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as _BackendTokenizer

_SENTENCEPIECE_SPACE = "▁"


class Tokenizer:
    """A Hugging Face tokenizer directory, loaded without ``transformers``."""

    def __init__(
        self,
        backend: _BackendTokenizer,
        *,
        special_ids: Iterable[int],
        eos_token_ids: Sequence[int],
        bos_token_id: int | None,
        byte_level: bool,
    ) -> None:
        self._backend = backend
        self._special_ids = frozenset(special_ids)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token_id: int | None = bos_token_id
        self._token_bytes = _token_byte_table(backend, byte_level=byte_level)
        self.max_token_bytes: int = max((len(b) for b in self._token_bytes), default=1)
        """The most bytes of text one token stands for."""

    @classmethod
    def from_dir(cls, path: Path | str) -> Tokenizer:
        """Load ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``."""
        path = Path(path)
        tokenizer_text = (path / "tokenizer.json").read_text(encoding="utf-8")
        backend = _BackendTokenizer.from_str(tokenizer_text)
        config = _read_json(path / "tokenizer_config.json")
        _add_missing_added_tokens(backend, config.get("added_tokens_decoder") or {})

        def token_id(entry: Any) -> int | None:
            content = entry.get("content") if isinstance(entry, dict) else entry
            return backend.token_to_id(content) if content else None

        eos_ids = [i for i in [token_id(config.get("eos_token"))] if i is not None]
        generation_eos = _read_json(path / "generation_config.json").get("eos_token_id")
        if isinstance(generation_eos, int):
            eos_ids.append(generation_eos)
        elif generation_eos:
            eos_ids.extend(int(i) for i in generation_eos)
        special_ids = [
            i for i, token in backend.get_added_tokens_decoder().items() if token.special
        ]
        return cls(
            backend,
            special_ids=special_ids,
            eos_token_ids=eos_ids,
            bos_token_id=token_id(config.get("bos_token")),
            byte_level=_is_byte_level(json.loads(tokenizer_text)),
        )

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings inside it become their ids."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (whole sequence at once, as Hugging Face decodes it)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes this token adds to the text (``b""`` for ids the vocabulary lacks)."""
        if 0 <= token_id < len(self._token_bytes):
            return self._token_bytes[token_id]
        return b""

    def token_text(self, token_id: int) -> str:
        """The token as text, or OpenAI's ``"bytes:\\xe3\\x81"`` form if not valid UTF-8 alone."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def is_special(self, token_id: int) -> bool:
        """Whether this is a special token (skipped when decoding with skip_special_tokens)."""
        return token_id in self._special_ids


class IncrementalDetokenizer:
    """Turns generated ids, one at a time, into text that is safe to stream.

    Text is released only as whole characters, and text that could still grow into a stop
    string is held back. Once a stop string appears, the text before it is released and the
    rest (the stop string and anything after) never is. Each call costs time proportional to
    the new token and the longest stop string, not to the text so far.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str] = (),
        *,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stops = tuple(s for s in dict.fromkeys(stop) if s)
        # Every proper prefix of a stop string: the tails of text we must not release yet.
        self._stop_prefixes = frozenset(s[:i] for s in self._stops for i in range(1, len(s)))
        self._longest_prefix = max((len(s) - 1 for s in self._stops), default=0)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that might be the start of a stop string
        self._ready: list[str] = []  # releasable, not yet taken
        self._released: list[str] = []
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """Whether a stop string has matched (later tokens are ignored)."""
        return self._stopped

    @property
    def text(self) -> str:
        """All text released so far (taken or still waiting in :meth:`take_text`)."""
        return "".join(self._released) + "".join(self._ready)

    def add(self, token_id: int) -> bool:
        """Append one token; True iff it completed a stop string."""
        if self._stopped:
            return False
        if self._skip_special and self._tokenizer.is_special(token_id):
            return False
        return self._push(self._utf8.decode(self._tokenizer.token_bytes(token_id)))

    def take_text(self) -> str:
        """The text that became releasable since the last call."""
        text = "".join(self._ready)
        self._ready.clear()
        if text:
            self._released.append(text)
        return text

    def finish(self) -> str:
        """End of generation: release all held text (but never a matched stop string).

        An incomplete UTF-8 sequence at the very end becomes U+FFFD.
        """
        if not self._stopped:
            self._push(self._utf8.decode(b"", final=True))
        if not self._stopped:
            self._ready.append(self._held)
            self._held = ""
        return self.take_text()

    def _push(self, new_text: str) -> bool:
        if not new_text:
            return False
        text = self._held + new_text
        # `_held` has no complete stop string, so any match ends inside `new_text`. The stop
        # string completed first wins, as if the text had arrived one character at a time.
        matches = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in self._stops) if i >= 0]
        if matches:
            _, start = min(matches)
            self._ready.append(text[:start])
            self._held = ""
            self._stopped = True
            return True
        keep = self._held_back_length(text)
        self._ready.append(text[: len(text) - keep])
        self._held = text[len(text) - keep :]
        return False

    def _held_back_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is the start of some stop string."""
        for length in range(min(self._longest_prefix, len(text)), 0, -1):
            if text[-length:] in self._stop_prefixes:
                return length
        return 0


def _is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    """Whether token strings use GPT-2's byte-to-unicode alphabet (vs SentencePiece style)."""

    def types(component: dict[str, Any] | None) -> list[str]:
        if not component:
            return []
        nested = component.get("decoders") or component.get("pretokenizers") or []
        return [component.get("type", ""), *(t for c in nested for t in types(c))]

    parts = types(tokenizer_json.get("decoder")) + types(tokenizer_json.get("pre_tokenizer"))
    return "ByteLevel" in parts


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's map that gives each byte a printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            mapping[chr(256 + shifted)] = byte
            shifted += 1
    return mapping


def _token_byte_table(backend: _BackendTokenizer, *, byte_level: bool) -> list[bytes]:
    """Bytes of every token id (added tokens as their UTF-8 content)."""
    size = backend.get_vocab_size(with_added_tokens=True)
    table = [b""] * size
    unicode_to_byte = _gpt2_unicode_to_byte() if byte_level else {}
    for token, token_id in backend.get_vocab(with_added_tokens=False).items():
        if byte_level and all(ch in unicode_to_byte for ch in token):
            table[token_id] = bytes(unicode_to_byte[ch] for ch in token)
        elif byte_level:  # a token outside the byte alphabet stands for its own text
            table[token_id] = token.encode("utf-8")
        else:
            table[token_id] = _sentencepiece_bytes(token)
    for token_id, added in backend.get_added_tokens_decoder().items():
        if token_id < size:
            table[token_id] = added.content.encode("utf-8")
    return table


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])  # byte-fallback piece
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")


def _add_missing_added_tokens(backend: _BackendTokenizer, decoder: dict[str, Any]) -> None:
    """Register tokens listed only in tokenizer_config.json, as transformers does."""
    known = {token.content for token in backend.get_added_tokens_decoder().values()}
    for _, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
        if entry["content"] in known:
            continue
        token = AddedToken(
            entry["content"],
            single_word=entry.get("single_word", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            normalized=entry.get("normalized", not entry.get("special", False)),
            special=entry.get("special", False),
        )
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
