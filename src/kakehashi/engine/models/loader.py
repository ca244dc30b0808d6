"""Find a model directory, read its config and load its safetensors weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from kakehashi.engine.models.base import ModelConfig
from kakehashi.engine.models.registry import UnsupportedModelError, model_family

# What a snapshot download fetches: enough to serve, never .bin/.pt/.gguf duplicates.
HUB_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class ModelSourceError(ValueError):
    """A model name or path could not be turned into a local model directory."""


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


def load_model(
    model_dir: Path, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> nn.Module:
    """Build the model for ``model_dir`` and load its weights (eval mode, no grad).

    ``dtype=None`` keeps the checkpoint's own ``torch_dtype`` (float32 if it names none).
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    dtype = dtype or checkpoint_dtype(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"no *.safetensors files in {model_dir}")
    model_class = model_family(config.architecture).model_class
    return model_class.from_weights(
        config, _iter_tensors(files, device), dtype=dtype, device=device
    )


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype a checkpoint says its weights are in (``dtype`` or ``torch_dtype``)."""
    raw = _read_json(Path(model_dir) / "config.json")
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise UnsupportedModelError(f"unsupported checkpoint dtype {name!r}")
    return _DTYPES[name]


def resolve_model_source(name_or_path: str) -> Path:
    """A local model directory for ``name_or_path``, downloading from the hub if need be."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(
                f"{local} is a directory without config.json, so not a model directory; "
                "pass one that holds config.json, *.safetensors and the tokenizer files"
            )
        return local
    hint = "pass the path of a local model directory (config.json, *.safetensors, tokenizer)"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelSourceError(
            f"{name_or_path!r} is not a local directory and huggingface_hub is not installed; "
            + hint
        ) from None
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except Exception as exc:  # offline, unknown repo, bad name: all mean "cannot get it"
        raise ModelSourceError(
            f"could not fetch model {name_or_path!r} from the Hugging Face hub ({exc}); " + hint
        ) from exc


def _iter_tensors(files: list[Path], device: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt", device=device) as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)


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
