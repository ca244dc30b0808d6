"""The printed table of one model: figures, baselines, ratios and the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _shapes import ModelShape
from _workload import Workload
from baselines.roofline import Roofline


@dataclass(frozen=True, slots=True)
class Target:
    """``kakehashi[metric] / baseline >= minimum``."""

    label: str
    metric: str
    baseline: str  # "llamacpp", "transformers" or "roofline"
    minimum: float


TARGETS = (
    Target("batch-1 decode >= 0.8x llama.cpp BF16", "decode_b1_tok_s", "llamacpp", 0.8),
    Target("batch-1 decode >= 3x transformers", "decode_b1_tok_s", "transformers", 3.0),
    Target("prefill >= 0.9x llama.cpp BF16", "prefill_tok_s", "llamacpp", 0.9),
    Target("batch-32 decode >= 40% of its roofline", "decode_b32_tok_s", "roofline", 0.4),
    Target("batch-32 decode >= 5x transformers", "decode_b32_tok_s", "transformers", 5.0),
)


def roof_for(metric: str, shape: ModelShape, limits: Roofline, workload: Workload) -> float | None:
    """The roofline of one metric, in tokens/s.

    A decode step at batch b reads every weight once plus each sequence's cached keys and
    values, and multiplies b tokens by the weights and by their contexts (taken at the mean
    context of the timed steps): b x the smaller of bandwidth / bytes and peak / FLOPs. The
    cache reads matter at batch 32 on a small model: about a fifth of SmolLM2's step bytes.
    Prefill is compute-bound.
    """
    params = shape.matmul_params()
    if metric.startswith("decode_b"):
        batch = int(metric.removeprefix("decode_b").removesuffix("_tok_s"))
        context = workload.decode_prompt_tokens + (workload.decode_tokens + 1) / 2
        step_bytes = 2 * params + batch * context * shape.kv_bytes_per_token()
        step_flops = batch * (2 * params + shape.attention_flops(context))
        steps_per_s = min(
            limits.read_gb_s * 1e9 / step_bytes, limits.bf16_gflop_s * 1e9 / step_flops
        )
        return batch * steps_per_s
    if metric.startswith("prefill"):
        return limits.compute_bound(params)
    return None


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{100 * value:.0f}%"
    return f"{value:,.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    """The first cell left-aligned, the others right-aligned."""
    pairs = zip(cells, widths, strict=True)
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(pairs))


def _rows(workload: Workload) -> list[tuple[str, str]]:
    rows = [(f"prefill {workload.prefill_tokens} tok/s", "prefill_tok_s")]
    for b in workload.batch_sizes:
        rows.append((f"decode batch {b} tok/s", f"decode_b{b}_tok_s"))
    for b in workload.batch_sizes:
        label = f"prefill {b}x{workload.decode_prompt_tokens} tok/s"
        rows.append((label, f"prefill_b{b}_tok_s"))
    rows.append(("peak RSS after load MiB", "rss_after_load_mb"))
    rows.append(("peak RSS at end MiB", "rss_peak_mb"))
    return rows


def print_model_report(
    shape: ModelShape, workload: Workload, limits: Roofline, result: dict[str, Any]
) -> None:
    """Print the table and the target verdicts for one model."""
    k = result.get("kakehashi", {})
    k_torch = result.get("kakehashi_torch", {})
    hf = result.get("transformers", {})
    lcpp = result.get("llamacpp", {})
    l_bf16, l_q8 = lcpp.get("bf16", {}), lcpp.get("q8_0", {})
    params = shape.total_params() / 1e6
    print(f"\n=== {shape.name} ({shape.arch}, {params:.1f}M params, bf16, random weights) ===")
    header = (
        "metric",
        "kakehashi",
        "k. torch-only",
        "transformers",
        "llama.cpp BF16",
        "llama.cpp Q8_0",
        "roofline",
        "k/llama.cpp",
        "k/transf.",
        "k/roof",
        "k/k.torch",
    )
    widths = (26, 10, 13, 12, 14, 14, 9, 11, 9, 7, 9)
    print(_line(header, widths))
    for label, key in _rows(workload):
        kv = k.get(key)
        roof = roof_for(key, shape, limits, workload) if key.endswith("tok_s") else None
        rss = key.startswith("rss")
        cells = (
            label,
            _fmt(kv),
            _fmt(k_torch.get(key)),
            _fmt(hf.get(key)),
            _fmt(l_bf16.get(key)),
            _fmt(l_q8.get(key)),
            _fmt(roof),
            "" if rss else _fmt(_ratio(kv, l_bf16.get(key)), "x"),
            "" if rss else _fmt(_ratio(kv, hf.get(key)), "x"),
            "" if rss else _fmt(_ratio(kv, roof), "%"),
            "" if rss else _fmt(_ratio(kv, k_torch.get(key)), "x"),
        )
        print(_line(cells, widths))

    if "cpu_kernels" in k:
        state = "on" if k["cpu_kernels"] else "OFF (no AVX-512 BF16 or no compiler)"
        print(f"kakehashi's own CPU kernels: {state}; k. torch-only runs without them")
    for label in ("bf16", "q8_0"):
        check = lcpp.get(label, {}).get("check")
        if check:
            verdict = "agree" if check["agrees"] else "DISAGREE (comparison meaningless)"
            print(
                f"llama.cpp {label.upper()} vs transformers fp32 logits on a"
                f" {workload.check_tokens}-token prompt: top-1 agreement"
                f" {100 * check['top1_agreement']:.0f}%, min cosine {check['min_cosine']:.4f},"
                f" max |diff| {check['max_abs_diff']:.3f} (logit std {check['reference_std']:.2f})"
                f" -> {verdict}"
            )
    systems = ("kakehashi", "kakehashi_torch", "transformers", "llamacpp")
    failures = {name: result.get(name, {}) for name in systems}
    failures.update(
        {f"llama.cpp {label.upper()}": lcpp.get(label, {}) for label in ("bf16", "q8_0")}
    )
    for name, part in failures.items():
        if "error" in part:
            print(f"{name} failed: {part['error']}")

    print("targets:")
    baselines = {"llamacpp": l_bf16, "transformers": hf}
    for target in TARGETS:
        kv = k.get(target.metric)
        if target.baseline == "roofline":
            base = roof_for(target.metric, shape, limits, workload)
        else:
            base = baselines[target.baseline].get(target.metric)
        ratio = _ratio(kv, base)
        if ratio is None:
            verdict = "n/a (not measured in this run)"
        else:
            shown = _fmt(ratio, "%" if target.baseline == "roofline" else "x")
            verdict = f"{'met' if ratio >= target.minimum else 'MISSED'} ({shown})"
        print(f"  {target.label:<42} {verdict}")
