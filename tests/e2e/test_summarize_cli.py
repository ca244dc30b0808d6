"""``kakehashi summarize`` on a saved HTML page against a real server: chunks, progress and a
streamed summary; plain text from stdin; bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.common import API_KEY, LLAMA_MODEL
from support.server import ServerProcess

PAGE = Path(__file__).parents[1] / "data" / "kintai_bridge.html"


@pytest.fixture
def env(llama_server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("KAKEHASHI_")}
    variables.update(
        KAKEHASHI_BASE_URL=llama_server.base_url,
        KAKEHASHI_API_KEY=API_KEY,
        KAKEHASHI_DATA_DIR=str(tmp_path),
        COLUMNS="100",
    )
    return variables


def summarize(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kakehashi.cli.main", "summarize", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_saved_page_in_chunks_with_progress(env: dict[str, str]) -> None:
    result = summarize(
        env, str(PAGE), "-m", LLAMA_MODEL, "--temperature", "0", "--language", "English"
    )
    assert result.returncode == 0, result.stderr
    progress = re.findall(r"summarizing (\d+) chunks.*?(\d+)/(\d+)", result.stderr)
    assert progress, result.stderr
    chunks, done, total = map(int, progress[0])
    assert chunks == done == total > 1  # the 512-token window needs several chunks
    assert result.stdout.strip()


def test_plain_text_from_stdin_fits_one_request(env: dict[str, str]) -> None:
    text = "The Kintai Bridge has five wooden arches.\n\nIt crosses the Nishiki River.\n"
    result = summarize(env, "-", "--length", "long", "--temperature", "0", stdin=text)
    assert result.returncode == 0, result.stderr
    assert "summarizing" not in result.stderr  # one chunk: no map round, no progress bar
    assert result.stdout.strip()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("x.html", "--length", "medium"), 2, "must be short or long"),
        (("no-such-file.html",), 1, "Cannot read no-such-file.html"),
        (("http://127.0.0.1:9/page",), 1, "Cannot fetch http://127.0.0.1:9/page"),
        ((str(PAGE), "--base-url", "http://127.0.0.1:9/v1"), 1, "Could not reach"),
        ((str(PAGE), "-m", "no-such-model"), 1, "does not exist"),
        ((str(PAGE), "--chunk-tokens", "3"), 2, "--chunk-tokens"),
    ],
)
def test_bad_input(env: dict[str, str], args: tuple[str, ...], code: int, message: str) -> None:
    result = summarize({**env, "COLUMNS": "200"}, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in re.sub(r"\s+", " ", result.stderr)
    assert "Traceback" not in result.stderr
