"""Seed-style code written for openai 0.28 and retired models fails against kakehashi; once
``kakehashi migrate`` has rewritten it, it runs (with the openai 1.x SDK installed here)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import ServerProcess, run_server

CASES = Path(__file__).parents[1] / "data" / "migrate"
KEY = "YOUR_API_KEY"  # what the seed's code sends


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    """The tiny model under the names the seeds' code (and its replacements) ask for."""
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name="tiny-llama",
        aliases=["gpt-3.5-turbo", "gpt-3.5-turbo-instruct"],
        api_keys=[KEY],
        max_model_len=512,
    ) as running:
        yield running


def run(server: ServerProcess, path: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KAKEHASHI_"))}
    env.update(
        OPENAI_BASE_URL=server.base_url,
        OPEN_AI_API_KEY=KEY,
        API_KEY=KEY,
        API_ENDPOINT=f"{server.base_url}/completions",
    )
    return subprocess.run(
        [sys.executable, str(path)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "failure"),
    [
        ("davinci_codex_repl", "APIRemovedInV1"),
        ("chat_completion_repl", "APIRemovedInV1"),
        ("requests_function", "text-davinci-003` has been deprecated"),
    ],
)
def test_migrated_seed_runs(server: ServerProcess, name: str, failure: str) -> None:
    before = run(server, CASES / f"{name}.before.py", "Where is the capital of Japan?\n")
    assert before.returncode != 0
    assert failure in before.stderr
    after = run(server, CASES / f"{name}.after.py", "Where is the capital of Japan?\nAnd?\n")
    assert after.returncode == 0, after.stderr
    if name == "requests_function":
        assert after.stdout.strip()
    else:
        assert after.stdout.count("ChatGPT: ") == 2
