"""Hugging Face ``transformers`` ``generate`` on the benchmark workload (a child process).

Run as ``python -m baselines.hf``. Greedy, fixed lengths (``min_new_tokens`` equal to
``max_new_tokens``), bf16 weights as in the checkpoint. Also writes the float32 reference logits
of the check prompt, which the llama.cpp conversion must reproduce.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList
from transformers.utils import logging as hf_logging

from _workload import (
    CHECK_SEED,
    PREFILL_SEED,
    THREADS,
    WARMUP_SEED,
    Workload,
    decode_batches,
    median,
    parse_child_args,
    peak_rss_mb,
    prompts,
    tokenizer_size,
    write_result,
)


class _Stamps(LogitsProcessor):
    """Records when each forward pass of ``generate`` has finished (one call per token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def _generate(model: Any, batch: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of greedy ``generate`` on same-length prompts."""
    ids = torch.tensor(batch, dtype=torch.long)
    stamps = _Stamps()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([stamps]),
        )
    return stamps.times[0] - start, stamps.times[-1] - stamps.times[0]


def measure(model_dir: Path, workload: Workload) -> dict[str, Any]:
    """Every transformers figure of the workload on the checkpoint in ``model_dir``."""
    torch.set_num_threads(THREADS)
    load_start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    result: dict[str, Any] = {
        "load_seconds": time.perf_counter() - load_start,
        "rss_after_load_mb": peak_rss_mb(),
    }
    vocab = tokenizer_size(model_dir)
    _generate(model, prompts(WARMUP_SEED, 2, 64, vocab), 4)

    prefill = []
    for p in prompts(PREFILL_SEED, workload.prefill_repeats, workload.prefill_tokens, vocab):
        seconds, _ = _generate(model, [p], 1)
        prefill.append(len(p) / seconds)
    result["prefill_tok_s"] = median(prefill)
    for batch_size in workload.batch_sizes:
        decode, prefill_b = [], []
        for batch in decode_batches(workload, batch_size, vocab):
            prefill_s, decode_s = _generate(model, batch, workload.decode_tokens + 1)
            decode.append(batch_size * workload.decode_tokens / decode_s)
            prefill_b.append(sum(map(len, batch)) / prefill_s)
        result[f"decode_b{batch_size}_tok_s"] = max(decode)
        result[f"prefill_b{batch_size}_tok_s"] = max(prefill_b)
    result["rss_peak_mb"] = peak_rss_mb()
    return result


def reference_logits(model_dir: Path, workload: Workload, out: Path) -> None:
    """Float32 logits (T, V) of the check prompt, and the prompt, for the llama.cpp check."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    (check,) = prompts(CHECK_SEED, 1, workload.check_tokens, tokenizer_size(model_dir))
    with torch.inference_mode():
        logits = model(torch.tensor([check])).logits[0].float().numpy()
    np.save(out, logits)
    out.with_suffix(".json").write_text(json.dumps(check), encoding="utf-8")


def main() -> None:
    model_dir, workload, out = parse_child_args(__doc__ or "")
    hf_logging.disable_progress_bar()
    result = measure(model_dir, workload)
    reference_logits(model_dir, workload, out.with_suffix(".logits.npy"))
    write_result(out, result)


if __name__ == "__main__":
    main()
