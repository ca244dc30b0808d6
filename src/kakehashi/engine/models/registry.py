"""Which model class runs which Hugging Face architecture, and how its config is read.

Adding a family is one entry in :data:`_ARCHITECTURES`; serving code never branches on the
model type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kakehashi.engine.models.base import ModelConfig
from kakehashi.engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM


class UnsupportedModelError(ValueError):
    """The checkpoint is a model kakehashi cannot run."""


class UnknownArchitectureError(UnsupportedModelError):
    """``architectures[0]`` of ``config.json`` names no family we implement."""

    def __init__(self, architecture: str) -> None:
        super().__init__(
            f"unsupported model architecture {architecture!r}; "
            f"supported: {', '.join(supported_architectures())}"
        )
        self.architecture = architecture


_ROPE_TYPES = ("default", "linear", "llama3")

ConfigReader = Callable[[Mapping[str, Any], tuple[int, ...]], ModelConfig]


@dataclass(frozen=True, slots=True)
class ModelFamily:
    """A model class and the function that turns its ``config.json`` into a ModelConfig."""

    model_class: type[LlamaForCausalLM]
    read_config: ConfigReader


def _read_llama_config(raw: Mapping[str, Any], eos_token_ids: tuple[int, ...]) -> ModelConfig:
    if raw.get("mlp_bias"):
        raise UnsupportedModelError("Llama checkpoints with mlp_bias=true are not supported")
    return _common_config(raw, eos_token_ids, attention_bias=bool(raw.get("attention_bias")))


def _read_mistral_config(raw: Mapping[str, Any], eos_token_ids: tuple[int, ...]) -> ModelConfig:
    window = raw.get("sliding_window")
    if window is not None and window < raw["max_position_embeddings"]:
        raise UnsupportedModelError(
            f"Mistral with a sliding window ({window} tokens) is not supported"
        )
    return _common_config(raw, eos_token_ids, attention_bias=False)


def _read_qwen2_config(raw: Mapping[str, Any], eos_token_ids: tuple[int, ...]) -> ModelConfig:
    if raw.get("use_sliding_window"):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=true is not supported")
    return _common_config(raw, eos_token_ids, attention_bias=True)


def _common_config(
    raw: Mapping[str, Any], eos_token_ids: tuple[int, ...], *, attention_bias: bool
) -> ModelConfig:
    num_heads = int(raw["num_attention_heads"])
    rope_theta, rope_scaling = _rope_settings(raw)
    return ModelConfig(
        architecture=raw["architectures"][0],
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or raw["hidden_size"] // num_heads),
        max_position_embeddings=int(raw["max_position_embeddings"]),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        eos_token_ids=eos_token_ids,
        bos_token_id=raw.get("bos_token_id"),
    )


def _rope_settings(raw: Mapping[str, Any]) -> tuple[float, dict | None]:
    """(theta, scaling) from either the classic keys or transformers v5's ``rope_parameters``."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = float(params["rope_theta"]), params
    else:
        theta, scaling = float(raw.get("rope_theta") or 10000.0), raw.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in _ROPE_TYPES:
        supported = ", ".join(_ROPE_TYPES)
        raise UnsupportedModelError(f"rope type {kind!r} is not supported (supported: {supported})")
    return theta, dict(scaling)


_LLAMA = ModelFamily(LlamaForCausalLM, _read_llama_config)
_ARCHITECTURES: dict[str, ModelFamily] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": ModelFamily(LlamaForCausalLM, _read_mistral_config),
    "Qwen2ForCausalLM": ModelFamily(Qwen2ForCausalLM, _read_qwen2_config),
}


def supported_architectures() -> list[str]:
    """Hugging Face architecture names we can run."""
    return sorted(_ARCHITECTURES)


def model_family(architecture: str) -> ModelFamily:
    """The family for ``architecture``; :class:`UnknownArchitectureError` if there is none."""
    try:
        return _ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownArchitectureError(architecture) from None
