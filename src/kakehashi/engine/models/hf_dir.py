"""Hugging Face model directories: ``config.json``, safetensors weights, ``tokenizer.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kakehashi.engine.chat_template import ChatTemplate
from kakehashi.engine.models.base import ModelConfig
from kakehashi.engine.models.registry import UnsupportedModelError, model_family
from kakehashi.engine.models.sources import ModelSourceError
from kakehashi.engine.tokenizer import Tokenizer

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def read_model_config(model_dir: Path) -> ModelConfig:
    """Read ``config.json`` (and eos ids from ``generation_config.json`` when it has them)."""
    raw = _read_json(Path(model_dir) / "config.json")
    architectures = raw.get("architectures") or []
    if not architectures:
        raise UnsupportedModelError(f"{model_dir}/config.json names no architecture")
    eos: Any = raw.get("eos_token_id")
    generation_config = Path(model_dir) / "generation_config.json"
    if generation_config.is_file():
        eos = _read_json(generation_config).get("eos_token_id", eos)
    return model_family(architectures[0]).read_config(raw, _as_id_tuple(eos))


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype a checkpoint says its weights are in (``dtype`` or ``torch_dtype``)."""
    raw = _read_json(Path(model_dir) / "config.json")
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise UnsupportedModelError(f"unsupported checkpoint dtype {name!r}")
    return _DTYPES[name]


class HFCheckpoint:
    """A Hugging Face model directory, opened as a
    :class:`~kakehashi.engine.models.checkpoint.Checkpoint`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = read_model_config(self.path)
        self._files = sorted(self.path.glob("*.safetensors"))
        if not self._files:
            raise ModelSourceError(f"no *.safetensors files in {self.path}")

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def dtype(self) -> torch.dtype:
        return checkpoint_dtype(self.path)

    def tensors(
        self, dtype: torch.dtype, device: str = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        del dtype  # the model casts while it copies
        for path in self._files:
            with safe_open(str(path), framework="pt", device=device) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield name, handle.get_tensor(name)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_dir(self.path)

    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_dir(self.path)

    def identity(self) -> bytes:
        config = self.path / "config.json"
        return config.read_bytes() if config.is_file() else b""

    def close(self) -> None:
        """Nothing stays open between reads."""


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{path} not found: not a model directory") from None
