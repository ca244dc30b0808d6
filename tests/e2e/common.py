"""Constants and helpers shared by the end-to-end test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
from tokenizers import Tokenizer

from support.contract import sdk_http_client
from support.server import ServerProcess

API_KEY = "sk-kakehashi-e2e"
LLAMA_MODEL = "tiny-llama"
LLAMA_ALIAS = "tiny-alias"
MAX_MODEL_LEN = 512
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me a story about a bridge."},
]


def sdk_client(server: ServerProcess) -> openai.OpenAI:
    """The official SDK pointed at ``server``; every response it gets is schema-checked."""
    return openai.OpenAI(
        base_url=server.base_url,
        api_key=server.api_key or "unused",
        max_retries=0,
        http_client=sdk_http_client(timeout=120),
    )


def _byte_level_alphabet() -> dict[int, str]:
    """Byte-level BPE's spelling of each byte: printable Latin-1 bytes stand for themselves,
    the others (controls, space, ...) are moved to code points 256 and up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    alphabet: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return alphabet


_BYTE_LEVEL = _byte_level_alphabet()


class TinyTokenizer:
    """The served model's own tokenizer (read with the ``tokenizers`` library, not ours)."""

    def __init__(self, model_dir: Path):
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        generation = json.loads((model_dir / "generation_config.json").read_text())
        eos = generation["eos_token_id"]
        self.eos_ids: list[int] = eos if isinstance(eos, list) else [eos]

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids as Hugging Face would give them (with BOS if the model adds one)."""
        return self._tokenizer.encode(text, add_special_tokens=special).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def id_of_bytes(self, data: bytes) -> int:
        """The id of the token whose raw bytes are ``data``."""
        return self.token_id("".join(_BYTE_LEVEL[byte] for byte in data))

    def token_id(self, text: str) -> int:
        """The id of a token spelled exactly ``text`` (byte-level form, e.g. ``"Ġthe"``)."""
        token_id = self._tokenizer.token_to_id(text)
        assert token_id is not None, f"no token {text!r} in the vocabulary"
        return token_id


def hf_chat_prompt_tokens(model_dir: Path, messages: list[dict[str, Any]]) -> int:
    """Prompt length when Hugging Face ``transformers`` renders the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer versions return an encoding
        ids = ids["input_ids"]
    return len(ids)


def stop_candidate(text: str) -> str:
    """Three printable ASCII characters of ``text``, taken after its first third (so some text
    comes before the stop string wherever it first occurs)."""
    for start in range(len(text) // 3, len(text) - 3):
        piece = text[start : start + 3]
        if piece.isascii() and piece.isprintable() and piece.strip() == piece:
            return piece
    raise AssertionError(f"no usable stop string in the model's output {text!r}")


def assert_same_counts(usage: Any, expected: Any) -> None:
    """Same prompt/completion/total token counts (cached-token details may differ)."""
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(usage, field) == getattr(expected, field), field
