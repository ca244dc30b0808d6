"""A BERT encoder (the architecture of all-MiniLM-L6-v2 and other sentence embedders).

Word + position + token-type embeddings, a LayerNorm, then ``N`` post-LN encoder layers
(self-attention and a GELU MLP, each followed by residual add and LayerNorm). The input is a
right-padded batch with a mask; the output is one hidden state per token. The pooler head of
``BertModel`` is not built: sentence embedders pool the token states themselves.

Shapes in comments: ``B`` batch rows, ``T`` padded length, ``H`` hidden size, ``A`` attention
heads, ``D`` head dim, ``I`` MLP intermediate size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kakehashi.engine.models.registry import UnsupportedModelError

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

# Checkpoint name -> our name. Order matters only in that each name matches one pattern.
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^embeddings\.word_embeddings\.", "word_embeddings."),
        (r"^embeddings\.position_embeddings\.", "position_embeddings."),
        (r"^embeddings\.token_type_embeddings\.", "token_type_embeddings."),
        (r"^embeddings\.LayerNorm\.", "embedding_norm."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention_out."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attention_norm."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp_in."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp_out."),
        (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
    )
)
# Present in BertModel checkpoints but unused by an encoder that returns token states.
_UNUSED = re.compile(r"^(pooler\.|cls\.|embeddings\.position_ids$)")


class WeightLoadError(ValueError):
    """A checkpoint does not fit the encoder: unknown, missing or mis-shaped tensors."""


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The parts of a BERT ``config.json`` the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BertConfig:
        """Read a Hugging Face ``BertModel`` config; refuse variants this encoder does not run."""
        if raw.get("model_type", "bert") != "bert":
            raise UnsupportedModelError(f"not a BERT model: model_type={raw['model_type']!r}")
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UnsupportedModelError(f"unsupported position embeddings {position_type!r}")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise UnsupportedModelError(f"unsupported activation {raw['hidden_act']!r}")
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_positions=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=str(raw.get("hidden_act", "gelu")),
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )


class BertLayer(nn.Module):
    """One post-LN encoder layer: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(hidden, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, hidden)
        self.mlp_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, H); ``attend`` (B, 1, 1, T) bool, True where a key is a real token."""
        batch, length, hidden = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, A, T, D)
            return t.view(batch, length, heads, hidden // heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # (B, A, T, D)
        context = context.transpose(1, 2).reshape(batch, length, hidden)  # (B, T, H)
        x = self.attention_norm(x + self.attention_out(context))
        return self.mlp_norm(x + self.mlp_out(self.activation(self.mlp_in(x))))  # (B, T, H)


class BertEncoder(nn.Module):
    """Token ids of a right-padded batch in, one hidden state per token out."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.word_embeddings = _uninitialized_embedding(config.vocab_size, hidden)
        self.position_embeddings = _uninitialized_embedding(config.max_positions, hidden)
        self.token_type_embeddings = _uninitialized_embedding(config.type_vocab_size, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``input_ids`` (B, T) long, ``mask`` (B, T) bool (True = real token) -> (B, T, H).

        All sentences use token type 0 (single-segment input).
        """
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )  # (B, T, H)
        x = self.embedding_norm(x)
        attend = mask[:, None, None, :]  # (B, 1, 1, T): every query sees the real keys only
        for layer in self.layers:
            x = layer(x, attend)
        return x

    @classmethod
    def from_weights(
        cls,
        config: BertConfig,
        tensors: Iterable[tuple[str, torch.Tensor]],
        *,
        device: str = "cpu",
    ) -> BertEncoder:
        """Build the encoder from checkpoint tensors (float32, eval mode, no grad)."""
        with torch.device("meta"):
            model = cls(config)
        state: dict[str, torch.Tensor] = {}
        for name, tensor in tensors:
            name = name.removeprefix("bert.")
            if _UNUSED.match(name):
                continue
            state[_rename(name)] = tensor.to(device=device, dtype=torch.float32)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise WeightLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise WeightLoadError(
                    f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                    f"model expects {tuple(expected[name].shape)}"
                )
        model.load_state_dict(state, assign=True)
        return model.eval().requires_grad_(False)


def _uninitialized_embedding(rows: int, size: int) -> nn.Embedding:
    # The checkpoint supplies the weights. Skipping the random init matters on the meta
    # device, where the first normal_() costs seconds of one-time setup inside torch.
    return nn.Embedding(rows, size, _weight=torch.empty(rows, size))


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        renamed, count = pattern.subn(replacement, name)
        if count:
            return renamed
    raise WeightLoadError(f"unexpected tensor in checkpoint: {name}")
