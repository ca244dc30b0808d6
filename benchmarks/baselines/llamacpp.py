"""llama-cpp-python baseline: its own venv, GGUF conversion, parity check and timings.

The venv lives under ``.cache/`` and is built once: ``llama-cpp-python`` compiles llama.cpp
from source with cmake for this CPU (a few minutes on 2 cores). Everything that touches
llama.cpp runs in that venv's Python (see :mod:`baselines._llamacpp_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _workload import describe_failure

BENCH_DIR = Path(__file__).resolve().parent.parent
CACHE_DIR = BENCH_DIR.parent / ".cache"
VENV_DIR = CACHE_DIR / "llamacpp-venv-0.3.36"
GGUF_DIR = CACHE_DIR / "bench-gguf"
REQUIREMENTS = ("llama-cpp-python==0.3.36", "gguf==0.19.0", "numpy>=1.26")
# Every x86 instruction set this machine's CPU has (AVX-512 with bf16 and VNNI), but not AMX:
# a GGML_NATIVE build enables llama.cpp's AMX kernels, whose first tile load dies with SIGILL
# in this VM (Q8_0 weights go through them). Other CPUs may need other flags.
CMAKE_ARGS = " ".join(
    [
        "-DGGML_NATIVE=OFF",
        *(
            f"-DGGML_{flag}=ON"
            for flag in (
                "AVX",
                "AVX2",
                "FMA",
                "F16C",
                "BMI2",
                "AVX_VNNI",
                "AVX512",
                "AVX512_VBMI",
                "AVX512_VNNI",
                "AVX512_BF16",
            )
        ),
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]
)
_BUILD_MARKER = "kakehashi-build.txt"  # the CMAKE_ARGS the venv was built with


def venv_python() -> Path:
    """The venv's Python, creating the venv and building llama-cpp-python if needed."""
    python = VENV_DIR / "bin" / "python"
    marker = VENV_DIR / _BUILD_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8") == CMAKE_ARGS:
        return python
    print(f"building llama-cpp-python into {VENV_DIR} (a few minutes, once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-cache-dir", *REQUIREMENTS],
        check=True,
        env=env,
    )
    marker.write_text(CMAKE_ARGS, encoding="utf-8")
    return python


def gguf_paths(model_dir: Path) -> tuple[Path, Path]:
    """Where the BF16 and Q8_0 conversions of ``model_dir`` are cached."""
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    return GGUF_DIR / f"{model_dir.name}-BF16.gguf", GGUF_DIR / f"{model_dir.name}-Q8_0.gguf"


def _worker(python: Path, *args: str) -> dict[str, Any] | None:
    """Run one worker command; return its JSON result, if it writes one."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
        subprocess.run(
            [python, "-m", "baselines._llamacpp_worker", *args, "--out", str(out)],
            check=True,
            env=env,
        )
        return json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None


def run(model_dir: Path, workload_json: str, reference: Path) -> dict[str, Any]:
    """Convert, check against ``reference`` logits, and time BF16 and Q8_0."""
    python = venv_python()
    bf16, q8 = gguf_paths(model_dir)
    common = ("--model-dir", str(model_dir))
    _worker(python, "prepare", *common, "--gguf", str(bf16), str(q8))
    result: dict[str, Any] = {}
    for label, path in (("bf16", bf16), ("q8_0", q8)):
        try:
            check = _worker(
                python, "check", *common, "--gguf", str(path), "--reference", str(reference)
            )
            timings = _worker(
                python, "measure", *common, "--gguf", str(path), "--workload", workload_json
            )
        except subprocess.CalledProcessError as exc:  # one variant failing spares the other
            result[label] = {"error": describe_failure(exc)}
            continue
        result[label] = {**(timings or {}), "check": check}
    return result
