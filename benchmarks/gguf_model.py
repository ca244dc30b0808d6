"""GGUF benchmark: the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against the same
weights as a bf16 safetensors directory, in one run.

    python benchmarks/gguf_model.py [--quick] [--repeats N]

(Not ``gguf.py``: the script's folder comes first on ``sys.path``, and that name would hide the
``gguf`` package.)

For each form, a fresh process (2 threads) loads the model as ``kakehashi serve`` does
(open the checkpoint, build the tokenizer, load the weights in bf16) and reports the load time,
the resident memory after loading (and its peak while loading), then decodes greedily at
batch 1 and batch 32 (``_kakehashi.run_batch``: distinct random prompts, fixed lengths) and
reports its tokens per second. The bf16 directory is written once under
``.cache/bench-models/`` from the GGUF's dequantized weights, so both runs compute with the
same numbers and differ only in how they were stored and read.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from _kakehashi import ENGINE_CONFIG, run_batch
from _workload import THREADS, WARMUP_SEED, Workload, decode_batches, peak_rss_mb, prompts
from kakehashi.engine.engine import LLMEngine
from kakehashi.engine.models.checkpoint import Checkpoint, GGUFCheckpoint, open_checkpoint
from kakehashi.engine.models.default_model import fetch_default_model, find_default_model
from kakehashi.engine.models.loader import load_model

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR.parent / ".cache"
BF16_DIR = CACHE / "bench-models" / "smollm2-135m-instruct-bf16"


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**10
    return float("nan")


def default_gguf() -> Path:
    """The default model's file: installed, fetched earlier, or fetched now."""
    data_dir = CACHE / "bench-data"
    return find_default_model(data_dir) or fetch_default_model(data_dir)


def write_bf16_dir(gguf: Path, out: Path) -> Path:
    """The GGUF's weights (dequantized, as bf16) and tokenizer as a Hugging Face directory."""
    if (out / "model.safetensors").is_file():
        return out
    checkpoint = GGUFCheckpoint(gguf)
    config = checkpoint.config
    tensors = {name: t.contiguous() for name, t in checkpoint.tensors(torch.bfloat16)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = checkpoint.tokenizer()
    tokenizer._backend.save(str(out / "tokenizer.json"))
    raw = {
        "architectures": [config.architecture],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "eos_token_id": list(config.eos_token_ids),
        "bos_token_id": config.bos_token_id,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    template = checkpoint.chat_template()
    tokenizer_config = {"chat_template": template.source, "eos_token": "<|im_end|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return out


def measure(path: Path, workload: Workload) -> dict[str, Any]:
    """Load ``path`` as serving does, then decode at each batch size (in this process)."""
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    checkpoint: Checkpoint = open_checkpoint(path)
    tokenizer = checkpoint.tokenizer()
    checkpoint.chat_template()
    model = load_model(checkpoint, dtype=torch.bfloat16)
    checkpoint.close()
    del checkpoint
    gc.collect()
    result: dict[str, Any] = {
        "load_seconds": time.perf_counter() - start,
        "rss_after_load_mb": current_rss_mb(),
        "rss_peak_load_mb": peak_rss_mb(),
    }
    engine = LLMEngine(model, tokenizer, ENGINE_CONFIG)
    vocab = tokenizer.vocab_size
    run_batch(engine, prompts(WARMUP_SEED, 2, 32, vocab), max_tokens=4)
    for batch_size in workload.batch_sizes:
        runs = [
            run_batch(engine, batch, max_tokens=workload.decode_tokens + 1)
            for batch in decode_batches(workload, batch_size, vocab)
        ]
        result[f"decode_b{batch_size}_tok_s"] = max(t.decode_rate for t in runs)
    result["cpu_kernels"] = engine.kv_cache.cpu_kernels
    return result


def _child(path: Path, workload: Workload) -> dict[str, Any]:
    out = CACHE / "bench-results" / f"gguf-{path.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__)), "--child", str(path), "--out", str(out)]
    command += ["--workload", workload.to_json()]
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text(encoding="utf-8"))


def _report(results: dict[str, dict[str, Any]], workload: Workload) -> None:
    gguf, bf16 = results["GGUF Q4_1"], results["safetensors bf16"]
    rows = [
        ("load (open, tokenizer, weights), s", "load_seconds", "{:.2f}"),
        ("RSS after load, MiB", "rss_after_load_mb", "{:.0f}"),
        ("peak RSS while loading, MiB", "rss_peak_load_mb", "{:.0f}"),
        *(
            (f"decode batch {b}, tok/s", f"decode_b{b}_tok_s", "{:.1f}")
            for b in workload.batch_sizes
        ),
    ]
    print(f"\n{'':38} {'GGUF Q4_1':>12} {'safetensors bf16':>17} {'ratio':>7}")
    for label, key, form in rows:
        ratio = gguf[key] / bf16[key] if bf16[key] else float("nan")
        print(
            f"{label:38} {form.format(gguf[key]):>12} {form.format(bf16[key]):>17} {ratio:>6.2f}x"
        )
    print(
        f"CPU kernels: {gguf['cpu_kernels']} / {bf16['cpu_kernels']}; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short decode runs (a smoke test)")
    parser.add_argument("--repeats", type=int, default=2, help="decode runs per batch size")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = measure(args.child, Workload.from_json(args.workload))
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return
    workload = Workload(decode_tokens=128, batch_sizes=(1, 32), decode_repeats=args.repeats)
    if args.quick:
        workload = replace(workload, decode_tokens=16, decode_repeats=1)
    gguf = default_gguf()
    bf16 = write_bf16_dir(gguf, BF16_DIR)
    print(f"GGUF: {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB)")
    print(f"bf16: {bf16} ({(bf16 / 'model.safetensors').stat().st_size / 2**20:.0f} MiB)")
    results = {}
    for label, path in (("GGUF Q4_1", gguf), ("safetensors bf16", bf16)):
        print(f"  {label}...", flush=True)
        results[label] = _child(path, workload)
    _report(results, workload)


if __name__ == "__main__":
    main()
