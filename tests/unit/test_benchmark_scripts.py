"""The benchmark scripts run as ``python benchmarks/NAME.py``, which puts their directory first
on ``sys.path``: a script named like a standard-library module would replace that module for
every benchmark (``platform.py`` once broke them all, through ``uuid``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_shadows_a_standard_library_module() -> None:
    names = {path.stem for path in BENCHMARKS.glob("*.py")}
    assert names, f"no benchmark scripts under {BENCHMARKS}"
    assert not names & sys.stdlib_module_names


def test_a_benchmark_script_starts() -> None:
    script = BENCHMARKS / "gateway.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "LiteLLM" in done.stdout
