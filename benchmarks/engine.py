"""Engine benchmark: kakehashi vs transformers vs llama.cpp, and the machine's limits.

    python benchmarks/engine.py [--model smollm2-135m|qwen2.5-0.5b|all] [--quick]
                                [--skip-llamacpp] [--skip-transformers] [--contention N]

Random bf16 weights in the real shapes of each model (cached under ``.cache/bench-models``).
Every system runs in its own process with 2 threads (the machine's cores) on the same prompts;
the figures of one run are printed side by side with the ratios the targets of issue 3 use.
With ``--contention N``, N busy processes run beside every system while it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from _contention import busy_processes
from _report import print_model_report
from _shapes import SHAPES, ModelShape, describe, model_dir
from _steal import CpuTimes, report_line, stolen_share
from _workload import THREADS, Workload, describe_failure
from baselines import llamacpp, roofline

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR.parent / ".cache" / "bench-results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _child(
    module: str, model: Path, workload: Workload, out: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one measuring module in a fresh Python process; return its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR), **(extra_env or {})}
    command = [sys.executable, "-m", module, "--model-dir", str(model)]
    command += ["--workload", workload.to_json(), "--out", str(out)]
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text(encoding="utf-8"))


def _guarded(label: str, fn: Any, *args: Any, contention: int = 0) -> dict[str, Any]:
    """Run one system's measurements beside ``contention`` busy processes; a failure is
    reported, not fatal to the others."""
    start = time.perf_counter()
    print(f"  {label}...", flush=True)
    try:
        with busy_processes(contention):
            result = fn(*args)
    except subprocess.CalledProcessError as exc:
        print(f"  {label} FAILED: {describe_failure(exc)}", flush=True)
        return {"error": describe_failure(exc)}
    except (OSError, ValueError) as exc:
        print(f"  {label} FAILED: {exc}", flush=True)
        return {"error": str(exc)}
    print(f"  {label} done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def _measure_limits(when: str, quick: bool) -> roofline.Roofline:
    limits = roofline.measure(THREADS, quick=quick)
    print(
        f"machine, {when}: read bandwidth {limits.read_gb_s:.1f} GB/s"
        f" (copy {limits.copy_gb_s:.1f} GB/s), bf16 matmul peak {limits.bf16_gflop_s:.0f} GFLOP/s",
        flush=True,
    )
    return limits


def bench_model(shape: ModelShape, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Every system's figures for one model shape."""
    print(f"\n== {shape.name}: preparing weights (load average {_load()})", flush=True)
    model = model_dir(shape)
    result: dict[str, Any] = {"shape": describe(shape), "model_dir": str(model)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        result["kakehashi"] = _guarded(
            "kakehashi",
            _child,
            "_kakehashi",
            model,
            workload,
            tmp_dir / "kakehashi.json",
            contention=args.contention,
        )
        if not args.skip_torch_only:
            # The same engine on torch's kernels only: what our CPU kernels add, in this run.
            result["kakehashi_torch"] = _guarded(
                "kakehashi (torch kernels only)",
                _child,
                "_kakehashi",
                model,
                replace(workload, profile=False),
                tmp_dir / "kakehashi-torch.json",
                {"KAKEHASHI_CPU_KERNELS": "0"},
                contention=args.contention,
            )
        reference = tmp_dir / "transformers.logits.npy"
        if not args.skip_transformers:
            result["transformers"] = _guarded(
                "transformers",
                _child,
                "baselines.hf",
                model,
                workload,
                tmp_dir / "transformers.json",
                contention=args.contention,
            )
        if not args.skip_llamacpp:
            if reference.is_file():
                result["llamacpp"] = _guarded(
                    "llama.cpp",
                    llamacpp.run,
                    model,
                    workload.to_json(),
                    reference,
                    contention=args.contention,
                )
            else:
                print("  llama.cpp skipped: it needs transformers' reference logits", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=[*SHAPES, "all"],
        help="default: all, or smollm2-135m with --quick",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--skip-torch-only",
        action="store_true",
        help="skip the run of kakehashi without its own CPU kernels",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where kakehashi's decode steps spend time"
    )
    parser.add_argument(
        "--contention",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes beside every system while it is measured (default 0)",
    )
    args = parser.parse_args()
    if args.contention < 0:
        parser.error("--contention must be 0 or more")
    workload = Workload.quick() if args.quick else Workload()
    if args.profile:
        workload = replace(workload, profile=True)
    model = args.model or ("smollm2-135m" if args.quick else "all")
    names = list(SHAPES) if model == "all" else [model]

    print(
        f"kakehashi engine benchmark: {THREADS} threads for every system (torch.set_num_threads,"
        f" llama.cpp n_threads), torch {torch.__version__}, {_cpu_name()} ({os.cpu_count()} cores)"
    )
    print(f"workload: {workload.to_json()}")
    print(f"load average before: {_load()} (anything above ~0.5 means others share the cores)")
    if args.contention:
        print(f"contention: {args.contention} busy processes beside every system measured")
    limits = _measure_limits("before", args.quick)
    report: dict[str, Any] = {"workload": json.loads(workload.to_json())}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"engine-{time.strftime('%Y%m%dT%H%M%S')}.json"
    for name in names:
        shape = SHAPES[name]
        before = CpuTimes.now()
        result = bench_model(shape, workload, args)
        result["cpu_time_stolen"] = stolen_share(before, CpuTimes.now())
        after = _measure_limits(f"after {name}", args.quick)
        # The machine's limits move within minutes here: each model's figures are set against
        # the better of the readings taken just before and just after its runs.
        model_limits = limits.best_of(after)
        limits = after
        result["roofline"] = asdict(model_limits)
        report[name] = result
        print_model_report(shape, workload, model_limits, result)
        print(report_line(result["cpu_time_stolen"]))
        for key, table in result.get("kakehashi", {}).items():
            if key.startswith("profile_"):
                print(f"\nkakehashi decode profile, {key.removeprefix('profile_')}:\n{table}")
        # Written after every model, so an interrupted run keeps what it measured.
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(f"\nload average after: {_load()}")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
