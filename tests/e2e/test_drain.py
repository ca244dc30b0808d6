"""``--max-queue-len 0`` admits while a slot is free (issue 14, defect 6), and SIGTERM drains
with a deadline (defect 11): /health says "draining", new requests get a 503, and streams
still running at the deadline end with an error frame before the server exits."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from e2e.common import LLAMA_MODEL, TinyTokenizer
from support.contract import check_response
from support.server import ServerProcess, run_server

DRAIN_SECONDS = 2.0


def _body(tokenizer: TinyTokenizer, max_tokens: int) -> dict[str, Any]:
    return {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": max_tokens,
        "logit_bias": {str(eos): -100 for eos in tokenizer.eos_ids},
        "stream": True,
    }


def _read_stream(server: ServerProcess, body: dict[str, Any], frames: list[str]) -> None:
    with (
        httpx.Client(timeout=120) as http,
        http.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        frames.extend(line for line in response.iter_lines() if line)


def test_no_queue_then_a_drain_with_a_deadline(
    tiny_llama_dir: Path, server_data_dir: Path, llama_tokenizer: TinyTokenizer
) -> None:
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=4096,
        extra_args=[
            *("--max-num-seqs", "2", "--max-queue-len", "0"),
            *("--drain-timeout", str(DRAIN_SECONDS), "--no-embeddings"),
        ],
        may_exit=True,
    ) as server:
        url = f"{server.base_url}/chat/completions"
        streams: list[list[str]] = [[], []]
        threads = [
            threading.Thread(target=_read_stream, args=(server, _body(llama_tokenizer, 4000), s))
            for s in streams
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not all(streams) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(streams), "both streams should be admitted with two slots and no queue"

        full = httpx.post(url, json={**_body(llama_tokenizer, 4), "stream": False}, timeout=30)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert check_response(full).json["error"]["code"] == "engine_overloaded"

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        health = httpx.get(f"{server.root_url}/health", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        assert health.headers["retry-after"]
        refused = httpx.post(url, json=_body(llama_tokenizer, 4), timeout=10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] and refused.headers["connection"] == "close"
        assert check_response(refused).json["error"]["code"] == "server_shutting_down"

        for thread in threads:
            thread.join(30)
        ended = time.monotonic() - signalled
        assert DRAIN_SECONDS - 0.5 <= ended < DRAIN_SECONDS + 5
        for frames in streams:
            assert frames[-1] != "data: [DONE]"
            error = json.loads(frames[-1].removeprefix("data: "))["error"]
            assert error["type"] == "server_error"
            assert "shutting down" in error["message"]
        server.process.wait(timeout=15)
        assert server.process.returncode in (0, -signal.SIGTERM)
        log = server.output()
        assert "drain deadline of 2 s passed; aborting 2 request(s)" in log
        assert "Traceback" not in log
