"""The Llama family (Llama 2/3, SmolLM2, Mistral without sliding window) and Qwen2.

Qwen2 is Llama with biases on the q/k/v projections (and usually tied embeddings), so both
live here. The model runs on a *packed* batch: ``T`` tokens of many sequences laid end to end.
Everything but attention is per token; attention is delegated to the engine's
:class:`~kakehashi.engine.models.base.AttentionContext`, which owns the KV cache and knows
where each sequence starts.

Shapes in comments: ``T`` tokens, ``H`` hidden size, ``Hq``/``Hkv`` query/key-value heads,
``D`` head dim, ``I`` MLP intermediate size, ``V`` vocabulary size.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kakehashi.engine.kernels import TORCH_KERNELS, Kernels
from kakehashi.engine.models.base import AttentionContext, ModelConfig, PagedDecode


class WeightLoadError(ValueError):
    """A checkpoint does not fit the model: unknown, missing or mis-shaped tensors."""


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back, as Hugging Face does."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps
        self.kernels = TORCH_KERNELS  # set by LlamaForCausalLM.use_kernels, as below

    def add_and_norm(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x += delta`` in place, then ``self(x)``: one pass with the CPU kernels."""
        if self.kernels.bf16:
            return torch.ops.kakehashi.add_rms_norm_(x, delta, self.weight, self.eps)
        return self(x.add_(delta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels.bf16:
            return torch.ops.kakehashi.rms_norm(x, self.weight, self.eps)
        # The fused kernel accumulates half-precision inputs in float32 and rounds once, which
        # is exactly Hugging Face's "upcast, normalize, cast back" (checked in the tests).
        return self.weight * F.rms_norm(x, self.weight.shape, eps=self.eps)


# cos and signed sin, (T, 1, D) each: sin's first half is negated so that rotating "half" is a
# swap of the two halves followed by one fused multiply-add (see _apply_rotary).
RotaryAngles = tuple[torch.Tensor, torch.Tensor]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (the "rotate half" layout), with optional frequency scaling.

    The angles of every position up to the largest one seen so far are kept in a table that
    grows by doubling, so a step looks its positions up instead of computing them. Computing
    them took two multithreaded MKL calls per step (for a handful of values), whose threads
    then spun on the cores our CPU kernels' own pool was working on (decode at batch 8 lost a
    fifth of its speed).
    """

    _MIN_TABLE = 256  # positions in the first table

    def __init__(self, head_dim: int, theta: float, scaling: dict | None) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self._table: RotaryAngles | None = None  # (P, D) cos and signed sin
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the frequencies, e.g. after the module was built on the meta device."""
        device = self.inv_freq.device if self.inv_freq.device.type != "meta" else None
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device)
        inv_freq = 1.0 / (self.theta ** (exponents.float() / self.head_dim))  # (D/2,)
        self.inv_freq = _scale_inv_freq(inv_freq, self.scaling)
        self._table = None

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> RotaryAngles:
        """cos and signed sin for each position (float32, then cast), shape (T, 1, D)."""
        if positions.numel() == 0:
            empty = torch.empty(0, 1, self.head_dim, dtype=dtype, device=positions.device)
            return empty, empty
        cos, signed_sin = self._angles_up_to(int(positions.max()) + 1, dtype)
        return cos.index_select(0, positions)[:, None], signed_sin.index_select(0, positions)[
            :, None
        ]

    def _angles_up_to(self, count: int, dtype: torch.dtype) -> RotaryAngles:
        """The table, grown if it has fewer than ``count`` positions or another dtype."""
        table = self._table
        device = self.inv_freq.device
        if table is not None and (table[0].dtype, table[0].device) != (dtype, device):
            table = None
        if table is None or table[0].shape[0] < count:
            size = max(self._MIN_TABLE, table[0].shape[0] * 2 if table is not None else 0)
            while size < count:
                size *= 2
            table = self._compute(torch.arange(size, device=device), dtype)
            self._table = table
        return table

    def _compute(self, positions: torch.Tensor, dtype: torch.dtype) -> RotaryAngles:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (P, D/2)
        cos, sin = freqs.cos(), freqs.sin()
        cos = torch.cat((cos, cos), dim=-1)  # (P, D)
        signed_sin = torch.cat((-sin, sin), dim=-1)
        return cos.to(dtype), signed_sin.to(dtype)


def _apply_rotary(x: torch.Tensor, angles: RotaryAngles) -> torch.Tensor:
    """Rotate ``x`` (T, heads, D) "rotate half" style; cos and sin broadcast over the heads.

    ``x * cos + cat(-x2, x1) * sin`` written as ``x * cos + cat(x2, x1) * cat(-s, s)``.
    """
    cos, signed_sin = angles
    t, heads, d = x.shape
    swapped = x.view(t, heads, 2, d // 2).flip(2).view(t, heads, d)
    return torch.addcmul(x * cos, swapped, signed_sin)


def _scale_inv_freq(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """Apply ``rope_scaling`` ("linear", Llama 3's "llama3", or "inv_freq_factors": one divisor
    per frequency, as GGUF files store Llama 3's) to the base frequencies."""
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "inv_freq_factors":
        factors = torch.tensor(scaling["factors"], dtype=inv_freq.dtype)
        return inv_freq / factors.to(inv_freq.device)
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        # Long wavelengths are slowed down by `factor`, short ones kept, the band between
        # interpolated smoothly.
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_context = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        in_band = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return torch.where(in_band, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3)")


# Batch size oneDNN lays prepacked weights out for; measured as good from 2 to 512 rows.
_PACK_BATCH_HINT = 32
# Up to this many rows our matrix-vector kernel beats oneDNN (which wins from 4 up).
_KERNEL_MAX_ROWS_LINEAR = 3


class Projection(nn.Module):
    """``x @ weight.T + bias`` for x (T, in), through the fastest kernel for the shape.

    It holds the packed copies of its weight that the kernels want (:meth:`prepare`). With
    our kernels, one to three rows go through our matrix-vector kernel and several through
    our AMX kernel where the CPU has AMX (for decode batches faster than oneDNN, for prompts
    between oneDNN's prepacked and plain paths). Otherwise a single token goes through torch's
    matrix-vector kernels, which stream the weight faster than a one-row matmul, and several
    rows through oneDNN on its prepacked copy, if there is one.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        self.kernels = TORCH_KERNELS
        self.amx_weight: torch.Tensor | None = None  # for torch.ops.kakehashi.amx_linear
        self.onednn_weight: torch.Tensor | None = None  # oneDNN-blocked, for several rows

    def prepare(self, kernels: Kernels, *, pack: bool) -> None:
        """Route through ``kernels``; with ``pack``, keep the one packed copy they want."""
        self.kernels = kernels
        self.amx_weight = self.onednn_weight = None
        if not pack or self.weight.device.type != "cpu":
            return
        weight = self.weight.detach()
        if kernels.amx:
            self.amx_weight = torch.ops.kakehashi.amx_pack(weight)
        elif _onednn_bf16(weight):
            self.onednn_weight = torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_BATCH_HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        rows = x.shape[0]
        if self.amx_weight is not None and rows > 1:
            return torch.ops.kakehashi.amx_linear(
                x, self.amx_weight, self.out_features, self.in_features, self.bias
            )
        if self.kernels.bf16 and rows <= _KERNEL_MAX_ROWS_LINEAR:
            return torch.ops.kakehashi.linear(x, self.weight, self.bias)
        if rows == 1:
            if self.bias is None:
                return torch.mv(self.weight, x[0])[None]
            return torch.addmv(self.bias, self.weight, x[0])[None]
        if self.onednn_weight is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.onednn_weight, self.bias, "none", [], "")


def _onednn_bf16(weight: torch.Tensor) -> bool:
    """Whether oneDNN multiplies this weight faster from a prepacked copy: bfloat16 on a CPU
    with native bfloat16 support (about 1.3x faster batched decode)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


class Attention(nn.Module):
    """Fused q/k/v projection, rotary embedding, the context's attention, output projection."""

    def __init__(
        self, config: ModelConfig, layer_index: int, *, o_bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = Projection(
            config.hidden_size,
            self.q_size + 2 * self.kv_size,
            bias=config.attention_bias,
            dtype=dtype,
        )
        self.o_proj = Projection(self.q_size, config.hidden_size, bias=o_bias, dtype=dtype)
        self.kernels = TORCH_KERNELS

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryAngles,
        ctx: AttentionContext,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # (T, Hq*D + 2*Hkv*D)
        rotated = self.num_heads + self.num_kv_heads
        # Queries and keys are rotated together, in one pass over their heads.
        if self.kernels.bf16:
            heads = qkv.view(num_tokens, -1, self.head_dim)  # (T, Hq + 2*Hkv, D)
            torch.ops.kakehashi.rotary_(heads, *rope, rotated)
            qk = heads[:, :rotated]
        else:
            qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, -1, self.head_dim)
            qk = _apply_rotary(qk, rope)  # (T, Hq + Hkv, D)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]  # (T, Hq, D), (T, Hkv, D)
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
        out = ctx.attend(self.layer_index, q, k, v)  # (T, Hq, D)
        return self.o_proj(out.reshape(num_tokens, self.q_size))  # (T, H)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Projection(
            config.hidden_size, 2 * config.intermediate_size, bias=False, dtype=dtype
        )
        self.down_proj = Projection(
            config.intermediate_size, config.hidden_size, bias=False, dtype=dtype
        )
        self.kernels = TORCH_KERNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # (T, 2I)
        if self.kernels.bf16:
            return self.down_proj(torch.ops.kakehashi.silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)  # (T, I) each
        return self.down_proj(F.silu(gate).mul_(up))  # (T, H)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    The last residual add is left to the caller (``pending``), who folds it into the next
    layer's input norm, or the final norm: one pass over ``x`` instead of two.
    """

    def __init__(
        self, config: ModelConfig, layer_index: int, *, o_bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, layer_index, o_bias=o_bias, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype)

    def forward(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        rope: RotaryAngles,
        ctx: AttentionContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` plus the previous layer's ``pending`` output → (x, this layer's pending).

        In place: ``x`` is this forward pass's own buffer (the embedding's output).
        """
        norm = self.input_layernorm
        normed = norm(x) if pending is None else norm.add_and_norm(x, pending)
        attended = self.self_attn(normed, rope, ctx)
        return x, self.mlp(self.post_attention_layernorm.add_and_norm(x, attended))

    def decode_step(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        rope: RotaryAngles,
        decode: PagedDecode,
    ) -> torch.Tensor:
        """:meth:`forward` for a decode-only step, as one call into the CPU kernels.

        Updates ``x`` in place and returns this layer's pending output, bit for bit what
        :meth:`forward` gives with the kernels on.
        """
        i, eps, weights = self._decode_args
        return torch.ops.kakehashi.decode_layer_(
            x,
            pending,
            *weights,
            *rope,
            decode.keys[i],
            decode.values[i],
            decode.slots,
            decode.block_tables,
            decode.context_lens,
            eps,
        )

    # (layer index, norm eps, _decode_weights()), set once by use_kernels: looking the
    # weights up through the submodules at every step cost about 1.5 ms per token.
    _decode_args: tuple[int, float, tuple[torch.Tensor | None, ...]]

    def prepare_decode_step(self) -> None:
        """Gather what :meth:`decode_step` passes to the kernel (after weights are packed)."""
        weights = self._decode_weights()
        self._decode_args = (self.self_attn.layer_index, self.input_layernorm.eps, weights)

    def _decode_weights(self) -> tuple[torch.Tensor | None, ...]:
        """The layer's weights in ``decode_layer_``'s order (None: no bias / no AMX copy)."""
        attn, mlp = self.self_attn, self.mlp

        return (
            self.input_layernorm.weight,
            attn.qkv_proj.weight,
            attn.qkv_proj.bias,
            attn.qkv_proj.amx_weight,
            attn.o_proj.weight,
            attn.o_proj.bias,
            attn.o_proj.amx_weight,
            self.post_attention_layernorm.weight,
            mlp.gate_up_proj.weight,
            mlp.gate_up_proj.amx_weight,
            mlp.down_proj.weight,
            mlp.down_proj.amx_weight,
        )


# Hugging Face tensor name (inside a layer) -> (our parameter, which slice of a fused tensor).
_LAYER_WEIGHTS: dict[str, tuple[str, str | None]] = {
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "post_attention_layernorm.weight": ("post_attention_layernorm.weight", None),
    "self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", "q"),
    "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", "k"),
    "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", "v"),
    "self_attn.q_proj.bias": ("self_attn.qkv_proj.bias", "q"),
    "self_attn.k_proj.bias": ("self_attn.qkv_proj.bias", "k"),
    "self_attn.v_proj.bias": ("self_attn.qkv_proj.bias", "v"),
    "self_attn.o_proj.weight": ("self_attn.o_proj.weight", None),
    "self_attn.o_proj.bias": ("self_attn.o_proj.bias", None),
    "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", "gate"),
    "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", "up"),
    "mlp.down_proj.weight": ("mlp.down_proj.weight", None),
}
_TOP_WEIGHTS: dict[str, str] = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Buffers some old checkpoints carry; we compute them ourselves.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class LlamaForCausalLM(nn.Module):
    """Llama-family decoder implementing the ``CausalLM`` protocol."""

    # Llama's `attention_bias` covers o_proj too; Qwen2 has biases on q/k/v only.
    o_proj_has_bias: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        o_bias = config.attention_bias and self.o_proj_has_bias
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, o_bias=o_bias, dtype=dtype) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.lm_head = Projection(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Set by use_kernels: decode-only steps may run each layer as one kernel call, for
        # batches whose projections our kernels handle well (AMX for several rows).
        self.kernels = TORCH_KERNELS
        self.fused_decode = False
        self.fused_decode_max_rows = 0

    @classmethod
    def from_weights(
        cls,
        config: ModelConfig,
        weights: Iterable[tuple[str, torch.Tensor]],
        *,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> LlamaForCausalLM:
        """Build the model without random init and fill it from Hugging Face-named tensors."""
        with torch.device("meta"):
            model = cls(config, dtype=dtype)
        model = model.to_empty(device=device)
        if config.tie_word_embeddings:  # to_empty allocates the shared tensor twice
            model.lm_head.weight = model.embed_tokens.weight
        model.rotary.reset_buffers()
        model.load_weights(weights)
        model.eval()
        model.requires_grad_(False)
        return model

    def use_kernels(self, kernels: Kernels, *, pack: bool) -> None:
        """Run on ``kernels`` (see :func:`~kakehashi.engine.kernels.resolve_kernels`).

        With ``pack``, every projection keeps a second, packed copy of its weight for
        multi-row matmuls: AMX-packed where ``kernels`` has AMX, oneDNN-blocked for bfloat16
        on torch's path where oneDNN has native bfloat16. Called once, before the first step.
        """
        for module in self.modules():
            if isinstance(module, Projection):
                module.prepare(kernels, pack=pack)
            elif isinstance(module, RMSNorm | Attention | MLP):
                module.kernels = kernels
        self.kernels = kernels
        self.fused_decode = kernels.bf16
        # Without AMX, several rows would go through the matrix-vector kernel, which reads the
        # weight once per four rows: oneDNN (the unfused path) is faster there.
        self.fused_decode_max_rows = (
            sys.maxsize if kernels.amx and pack else _KERNEL_MAX_ROWS_LINEAR
        )
        if kernels.bf16:
            for layer in self.layers:
                layer.prepare_decode_step()

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """input_ids, positions: (T,) → final-normed hidden states (T, H)."""
        if self.kernels.bf16 and input_ids.device.type == "cpu":
            x = torch.ops.kakehashi.embedding(self.embed_tokens.weight, input_ids)  # (T, H)
        else:
            x = self.embed_tokens(input_ids)
        rope = self.rotary(positions, x.dtype)  # shared by every layer
        pending = None
        decode = ctx.paged_decode if self.fused_decode else None
        if decode is not None and x.shape[0] <= self.fused_decode_max_rows:
            for layer in self.layers:
                pending = layer.decode_step(x, pending, rope, decode)
        else:
            for layer in self.layers:
                x, pending = layer(x, pending, rope, ctx)
        return self.norm(x) if pending is None else self.norm.add_and_norm(x, pending)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, H) → logits (N, V), in the model's dtype."""
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into our (partly fused) parameters.

        Raises :class:`WeightLoadError` for unknown or mis-shaped tensors, and for parameters
        the checkpoint did not provide.
        """
        params = dict(self.named_parameters())
        missing = {self._coverage_key(name, part) for name, part in self._expected_pieces()}
        for hf_name, tensor in weights:
            if hf_name.endswith(_IGNORED_SUFFIXES):
                continue
            if hf_name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints store a copy; the embedding is the truth
            name, part = self._map_name(hf_name)
            if name not in params:
                raise WeightLoadError(f"checkpoint tensor {hf_name!r} has no place in the model")
            target = params[name].data
            if part is not None:
                target = target.narrow(0, *self._fused_span(name, part))
            if target.shape != tensor.shape:
                raise WeightLoadError(
                    f"{hf_name}: checkpoint shape {tuple(tensor.shape)}, "
                    f"model expects {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(tensor)
            missing.discard(self._coverage_key(name, part))
        if missing:
            raise WeightLoadError(f"checkpoint lacks tensors for: {sorted(missing)[:8]}")

    def _map_name(self, hf_name: str) -> tuple[str, str | None]:
        if hf_name in _TOP_WEIGHTS:
            return _TOP_WEIGHTS[hf_name], None
        match = _LAYER_NAME.fullmatch(hf_name)
        if match is None or match.group(2) not in _LAYER_WEIGHTS:
            raise WeightLoadError(f"unknown checkpoint tensor {hf_name!r}")
        name, part = _LAYER_WEIGHTS[match.group(2)]
        return f"layers.{match.group(1)}.{name}", part

    def _fused_span(self, name: str, part: str) -> tuple[int, int]:
        """(start, length) of ``part`` along dim 0 of the fused parameter ``name``."""
        c = self.config
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        spans = {
            "q": (0, q),
            "k": (q, kv),
            "v": (q + kv, kv),
            "gate": (0, c.intermediate_size),
            "up": (c.intermediate_size, c.intermediate_size),
        }
        return spans[part]

    def _expected_pieces(self) -> Iterable[tuple[str, str | None]]:
        """Every (parameter, fused part) a complete checkpoint must fill."""
        params = dict(self.named_parameters(remove_duplicate=False))
        top = [(name, None) for name in _TOP_WEIGHTS.values()]
        for name, part in [*top, *self._layer_pieces()]:
            if name in params and not (
                name == "lm_head.weight" and self.config.tie_word_embeddings
            ):
                yield name, part

    def _layer_pieces(self) -> Iterable[tuple[str, str | None]]:
        for i in range(self.config.num_layers):
            for name, part in _LAYER_WEIGHTS.values():
                yield f"layers.{i}.{name}", part

    @staticmethod
    def _coverage_key(name: str, part: str | None) -> str:
        return name if part is None else f"{name}[{part}]"


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with q/k/v biases (``attention_bias`` is always on) and no o_proj bias."""

    o_proj_has_bias = False
