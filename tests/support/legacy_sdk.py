"""Drive the old ``openai==0.28.1`` SDK from tests, in its own ``pip --target`` directory.

The modern SDK is installed in the test environment, so 0.28 lives apart: it is installed once
into ``<repo>/.cache/openai028`` (gitignored; reused across runs) and each snippet runs in a
subprocess with that directory first on ``PYTHONPATH``. A snippet hands its answer back by
assigning a JSON-serialisable value to ``result``::

    code = "import openai\\nopenai.api_base = BASE\\nresult = openai.Model.list()"
    models = run_snippet(ensure_legacy_openai(), code, variables={"BASE": url})
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

__all__ = ["LEGACY_OPENAI_REQUIREMENT", "default_cache_dir", "ensure_legacy_openai", "run_snippet"]

LEGACY_OPENAI_REQUIREMENT = "openai==0.28.1"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_READY_MARKER = ".kakehashi-ready"
_RESULT_MARKER = "@@kakehashi-result@@"
_INSTALL_TIMEOUT_SECONDS = 240


def default_cache_dir() -> Path:
    """Where the 0.28 SDK is installed: ``<repo>/.cache/openai028``."""
    return _REPO_ROOT / ".cache" / "openai028"


def _is_ready(target: Path) -> bool:
    return (target / _READY_MARKER).is_file() and (target / "openai" / "__init__.py").is_file()


def ensure_legacy_openai(target: Path | None = None) -> Path:
    """Install ``openai==0.28.1`` (with its dependencies) into ``target`` unless already there.

    Skips the calling test, with pip's output as the reason, when pip cannot install it (no
    network). Returns the directory to put on ``PYTHONPATH``.
    """
    target = target or default_cache_dir()
    if _is_ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the final place and rename, so a half-finished install is never used.
    staging = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=target.parent))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(staging),
            LEGACY_OPENAI_REQUIREMENT,
        ]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip install {LEGACY_OPENAI_REQUIREMENT} timed out (no network?)")
        if completed.returncode != 0:
            tail = (completed.stdout + completed.stderr)[-2000:]
            pytest.skip(f"cannot pip install {LEGACY_OPENAI_REQUIREMENT} (no network?):\n{tail}")
        (staging / _READY_MARKER).write_text(LEGACY_OPENAI_REQUIREMENT + "\n")
        if target.exists():  # an older, unfinished or concurrent install
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not _is_ready(target):  # lost a race to a concurrent install that did finish?
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_PRELUDE = """\
import json as _json, sys as _sys
globals().update(_json.loads(_sys.argv[1]))
"""

_EPILOGUE = """
_sys.stdout.write("\\n{marker}" + _json.dumps(result) + "\\n")
"""


def run_snippet(
    target: Path,
    code: str,
    *,
    variables: Mapping[str, Any] | None = None,
    timeout: float = 120.0,
) -> Any:
    """Run ``code`` with ``target`` first on ``PYTHONPATH``; return the JSON value it leaves in
    ``result``. ``variables`` (JSON-serialisable) are predefined as globals of the snippet.

    Raises ``AssertionError`` with the snippet's output if it fails.
    """
    program = _PRELUDE + textwrap.dedent(code) + _EPILOGUE.format(marker=_RESULT_MARKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"  # the old SDK's own deprecation noise is not under test
    completed = subprocess.run(
        [sys.executable, "-c", program, json.dumps(dict(variables or {}))],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    output = f"stdout:\n{completed.stdout[-4000:]}\nstderr:\n{completed.stderr[-4000:]}"
    if completed.returncode != 0:
        raise AssertionError(f"legacy SDK snippet failed ({completed.returncode}):\n{output}")
    _, found, payload = completed.stdout.rpartition(_RESULT_MARKER)
    if not found:
        raise AssertionError(f"legacy SDK snippet printed no result:\n{output}")
    return json.loads(payload)
