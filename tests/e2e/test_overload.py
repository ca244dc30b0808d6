"""A full server queues what it can and turns the rest away with an OpenAI-shaped 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.common import LLAMA_MODEL, TinyTokenizer
from support.contract import check_response
from support.server import ServerProcess, run_server


@pytest.fixture(scope="module")
def full_server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    # One running sequence and one waiting request fill it.
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=4096,
        extra_args=[
            *("--max-num-seqs", "1", "--max-queue-len", "1", "--kv-cache-memory", "8MiB"),
            "--no-embeddings",
        ],
    ) as server:
        yield server


def _long_body(tokenizer: TinyTokenizer, *, stream: bool) -> dict[str, Any]:
    return {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": 3000,
        "logit_bias": {str(eos): -100 for eos in tokenizer.eos_ids},
        "stream": stream,
    }


def _post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(timeout=120) as http:
        return http.post(f"{server.base_url}/chat/completions", json=body)


def test_requests_beyond_the_queue_get_503(
    full_server: ServerProcess, tiny_llama_dir: Path
) -> None:
    tokenizer = TinyTokenizer(tiny_llama_dir)
    results: dict[str, httpx.Response] = {}

    def occupy(name: str) -> None:
        results[name] = _post(full_server, _long_body(tokenizer, stream=False))

    running = threading.Thread(target=occupy, args=("running",))
    running.start()
    time.sleep(0.5)  # let it be admitted
    waiting = threading.Thread(target=occupy, args=("waiting",))
    waiting.start()
    time.sleep(0.5)
    try:
        for stream in (False, True):
            refused = _post(full_server, {**_long_body(tokenizer, stream=stream), "max_tokens": 4})
            assert refused.status_code == 503, refused.text
            error = check_response(refused).json["error"]
            assert error["type"] == "server_error"
            assert error["code"] == "engine_overloaded"
            assert "overloaded" in error["message"] and "retry" in error["message"]
        assert "running" not in results, "the long request ended before the test could overload"
    finally:
        running.join(timeout=180)
        waiting.join(timeout=180)
    # The queued request was served, not dropped.
    for name in ("running", "waiting"):
        assert results[name].status_code == 200, results[name].text
        assert check_response(results[name]).json["usage"]["completion_tokens"] == 3000
