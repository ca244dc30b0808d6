"""A model on disk, opened once: its config, weights, tokenizer and chat template.

Two layouts: a Hugging Face directory (:mod:`~kakehashi.engine.models.hf_dir`) and a GGUF file
(:mod:`~kakehashi.engine.models.gguf_file`), or a directory holding exactly one.
:func:`open_checkpoint` picks the right one; the builder and the backend then read everything
through the same :class:`Checkpoint`, so a GGUF file is parsed once however much is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from kakehashi.engine.chat_template import ChatTemplate
from kakehashi.engine.gguf_tokenizer import chat_template_from_gguf, tokenizer_from_gguf
from kakehashi.engine.models.base import ModelConfig
from kakehashi.engine.models.gguf_file import GGUFFile
from kakehashi.engine.models.hf_dir import HFCheckpoint
from kakehashi.engine.models.registry import UnsupportedModelError
from kakehashi.engine.models.sources import ModelSourceError
from kakehashi.engine.tokenizer import Tokenizer


class Checkpoint(Protocol):
    """What loading a model needs from its files."""

    path: Path
    config: ModelConfig

    @property
    def name(self) -> str:
        """A short name for logs (the directory name or the file's stem)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are stored in (quantized ones: the half type they came from)."""
        ...

    def tensors(
        self, dtype: torch.dtype, device: str = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight as (Hugging Face name, tensor). ``dtype`` is what the caller will cast
        to, so a loader that converts anyway (dequantizing) converts straight to it."""
        ...

    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""
        ...

    def chat_template(self) -> ChatTemplate:
        """The model's chat template."""
        ...

    def identity(self) -> bytes:
        """Bytes that change when the model does (for ``system_fingerprint``)."""
        ...

    def close(self) -> None:
        """Release open files and mappings once loading is done."""
        ...


class GGUFCheckpoint:
    """A GGUF file, as a :class:`Checkpoint`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        self.config = self.file.config
        self._tokenizer: Tokenizer | None = None
        self._chat_template: ChatTemplate | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def dtype(self) -> torch.dtype:
        return self.file.checkpoint_dtype

    def tensors(
        self, dtype: torch.dtype, device: str = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        del device  # dequantized on the CPU; the model copies to its device
        return self.file.tensors(dtype)

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:  # built once: the vocabulary is tens of thousands of tokens
            self._tokenizer = tokenizer_from_gguf(self.file)
        return self._tokenizer

    def chat_template(self) -> ChatTemplate:
        if self._chat_template is None:
            self._chat_template = chat_template_from_gguf(self.file, self.path.name)
        return self._chat_template

    def identity(self) -> bytes:
        size = self.path.stat().st_size
        return hashlib.sha256(f"{self.path.name}|{size}|{self.config}".encode()).digest()

    def close(self) -> None:
        self.file.close()


def gguf_in(directory: Path) -> Path | None:
    """The one ``.gguf`` model file in ``directory`` (None if it holds none); an error naming
    them if it holds several. Multimodal projectors (``mmproj*``) do not count."""
    found = sorted(
        p for p in directory.glob("*.gguf") if p.is_file() and not p.name.startswith("mmproj")
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UnsupportedModelError(f"{directory} holds several GGUF files ({names}); name one")
    return found[0] if found else None


def open_checkpoint(path: Path | str) -> Checkpoint:
    """The checkpoint at ``path``: a GGUF file, a directory holding exactly one (and no
    ``config.json``), or a Hugging Face model directory."""
    path = Path(path)
    if path.is_file():
        return GGUFCheckpoint(path)
    if path.is_dir() and not (path / "config.json").is_file():
        found = gguf_in(path)
        if found is not None:
            return GGUFCheckpoint(found)
        raise ModelSourceError(
            f"{path} is a directory without config.json or a .gguf file, so not a model "
            "directory; pass a GGUF file, or a directory holding config.json, *.safetensors "
            "and the tokenizer files"
        )
    return HFCheckpoint(path)
