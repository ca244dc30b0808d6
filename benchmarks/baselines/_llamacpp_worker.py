"""The llama.cpp side of the benchmark; runs inside the llama.cpp venv (no torch here).

``python -m baselines._llamacpp_worker prepare|check|measure ...``: ``prepare`` converts the
checkpoint to BF16 GGUF and quantizes it to Q8_0, ``check`` compares llama.cpp's logits on the
check prompt with transformers' float32 reference, ``measure`` times prefill and decode.
Each runs in its own process so that peak RSS belongs to one model.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from _workload import (
    PREFILL_SEED,
    THREADS,
    WARMUP_SEED,
    Workload,
    decode_batches,
    median,
    peak_rss_mb,
    prompts,
    tokenizer_size,
    write_result,
)
from baselines.gguf_convert import convert


@llama_cpp.llama_log_callback
def _errors_only(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level == _GGML_LOG_LEVEL_ERROR:
        print(text.decode("utf-8", "replace"), end="", flush=True)


_GGML_LOG_LEVEL_ERROR = 3
llama_cpp.llama_log_set(_errors_only, ctypes.c_void_p(0))

# Agreement required between llama.cpp (BF16 GGUF) and transformers (float32) on the check
# prompt: a wrong tensor layout (e.g. a missing rotary permutation) breaks both by far.
MIN_TOP1_AGREEMENT = 0.9
MIN_COSINE = 0.99


def prepare(model_dir: Path, bf16_path: Path, q8_path: Path) -> None:
    """Write the BF16 GGUF and its Q8_0 quantization unless they exist already."""
    if not bf16_path.is_file():
        convert(model_dir, bf16_path)
    if not q8_path.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.nthread = THREADS
        tmp = q8_path.with_suffix(".tmp")
        status = llama_cpp.llama_model_quantize(
            str(bf16_path).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if status != 0:
            raise RuntimeError(f"llama_model_quantize failed with status {status}")
        tmp.rename(q8_path)


def _load(path: Path, n_ctx: int, *, logits_all: bool = False) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=logits_all,
        verbose=False,
    )


class _Batch:
    """A llama.cpp context for ``n_seq`` parallel sequences and a token batch to feed it."""

    def __init__(self, llm: llama_cpp.Llama, n_seq: int, n_tokens: int, seq_len: int) -> None:
        params = llama_cpp.llama_context_default_params()
        per_seq = -(-(seq_len + 16) // 256) * 256  # llama.cpp splits n_ctx evenly
        params.n_ctx = n_seq * per_seq
        params.n_batch = params.n_ubatch = max(n_tokens, 512)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = THREADS
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.n_vocab = llm.n_vocab()

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Feed (token, position, sequence, wants logits) rows; return the logits asked for."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        status = llama_cpp.llama_decode(self.ctx, b)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        rows = sum(1 for e in entries if e[3])
        pointer = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(rows, self.n_vocab))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def parallel_decode(
    llm: llama_cpp.Llama, batch: list[list[int]], new_tokens: int
) -> tuple[float, float]:
    """Greedy decode of every prompt at once; (prefill tok/s, aggregate decode tok/s).

    All prompts are prefilled in one batch, then each step feeds one token per sequence, as
    llama.cpp's server does with parallel slots.
    """
    prompt_len = len(batch[0])
    runner = _Batch(llm, len(batch), prompt_len * len(batch), prompt_len + new_tokens)
    try:
        entries = [
            (token, pos, seq, pos == prompt_len - 1)
            for seq, prompt in enumerate(batch)
            for pos, token in enumerate(prompt)
        ]
        start = time.perf_counter()
        tokens = runner.decode(entries).argmax(-1).tolist()
        first = time.perf_counter()
        for step in range(new_tokens):
            pos = prompt_len + step
            entries = [(token, pos, seq, True) for seq, token in enumerate(tokens)]
            tokens = runner.decode(entries).argmax(-1).tolist()
        end = time.perf_counter()
    finally:
        runner.close()
    return prompt_len * len(batch) / (first - start), len(batch) * new_tokens / (end - first)


def check(gguf_path: Path, reference: Path) -> dict[str, Any]:
    """How closely llama.cpp's logits on the check prompt match transformers' float32 ones."""
    expected = np.load(reference)
    prompt = json.loads(reference.with_suffix(".json").read_text(encoding="utf-8"))
    llm = _load(gguf_path, n_ctx=max(256, len(prompt)), logits_all=True)
    llm.eval(prompt)
    got = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    top1 = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    cosine = np.sum(got * expected, -1) / (
        np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1)
    )
    return {
        "top1_agreement": top1,
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float(np.abs(got - expected).max()),
        "reference_std": float(expected.std()),
        "agrees": top1 >= MIN_TOP1_AGREEMENT and float(cosine.min()) >= MIN_COSINE,
    }


def measure(gguf_path: Path, workload: Workload, vocab: int) -> dict[str, Any]:
    """Prefill rate, and greedy decode rates at every batch size of the workload."""
    load_start = time.perf_counter()
    n_ctx = max(workload.prefill_tokens, workload.decode_prompt_tokens + workload.decode_tokens)
    llm = _load(gguf_path, n_ctx=n_ctx + 16)
    result: dict[str, Any] = {
        "load_seconds": time.perf_counter() - load_start,
        "rss_after_load_mb": peak_rss_mb(),
    }
    for warm in prompts(WARMUP_SEED, 2, 64, vocab):
        llm.reset()
        llm.eval(warm)

    rates = []
    for prompt in prompts(PREFILL_SEED, workload.prefill_repeats, workload.prefill_tokens, vocab):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        rates.append(len(prompt) / (time.perf_counter() - start))
    result["prefill_tok_s"] = median(rates)

    for batch_size in workload.batch_sizes:
        runs = [
            parallel_decode(llm, batch, workload.decode_tokens)
            for batch in decode_batches(workload, batch_size, vocab)
        ]
        result[f"prefill_b{batch_size}_tok_s"] = max(prefill for prefill, _ in runs)
        result[f"decode_b{batch_size}_tok_s"] = max(decode for _, decode in runs)
    result["rss_peak_mb"] = peak_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["prepare", "check", "measure"])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, nargs="+", required=True)
    parser.add_argument("--workload", default=Workload().to_json())
    parser.add_argument("--reference", type=Path, help="reference logits (.npy) for check")
    parser.add_argument("--out", type=Path, help="where to write the JSON result")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.model_dir, *args.gguf)
        return
    if args.command == "check":
        result = check(args.gguf[0], args.reference)
    else:
        workload = Workload.from_json(args.workload)
        result = measure(args.gguf[0], workload, tokenizer_size(args.model_dir))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
