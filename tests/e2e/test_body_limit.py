"""Bodies over the limit are refused as they arrive, long prompts are measured before they are
tokenized, and neither stalls other streams (issue 14, defect 5)."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from e2e.common import API_KEY, LLAMA_MODEL, TinyTokenizer
from support.contract import check_response
from support.server import ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
DEFAULT_LIMIT = 4 * 1024 * 1024


def _chat(content: str, **extra: Any) -> bytes:
    body = {"model": LLAMA_MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


def _connection(server: ServerProcess) -> http.client.HTTPConnection:
    host, port = server.root_url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def test_a_declared_oversize_body_is_a_413_and_the_connection_stays(
    llama_server: ServerProcess,
) -> None:
    conn = _connection(llama_server)
    try:
        body = _chat("x" * (DEFAULT_LIMIT + 10))
        conn.request("POST", "/v1/chat/completions", body=body, headers=AUTH)
        response = conn.getresponse()
        error = json.loads(response.read())["error"]
        assert response.status == 413
        assert error["code"] == "request_too_large" and str(DEFAULT_LIMIT) in error["message"]
        # The rest of the body was discarded, not left to be parsed as the next request.
        conn.request("POST", "/v1/chat/completions", body=_chat("hi", max_tokens=2), headers=AUTH)
        after = conn.getresponse()
        assert after.status == 200, after.read()
        after.read()
    finally:
        conn.close()


def test_a_chunked_oversize_body_is_a_413(llama_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "%s", "prompt": "' % LLAMA_MODEL.encode()
        for _ in range(80):  # 5 MiB in all, with no Content-Length
            yield b"y" * 65536
        yield b'"}'

    response = httpx.post(
        f"{llama_server.base_url}/completions", content=chunks(), headers=AUTH, timeout=60
    )
    assert response.status_code == 413, response.text
    assert check_response(response).json["error"]["code"] == "request_too_large"


def test_a_prompt_too_long_for_any_tokenization_is_refused_without_tokenizing(
    llama_server: ServerProcess,
) -> None:
    started = time.perf_counter()
    body = _chat("bridge " * 450_000)  # 3 MB: under the body limit, far over 512 tokens
    response = httpx.post(
        f"{llama_server.base_url}/chat/completions", content=body, headers=AUTH, timeout=60
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    error = check_response(response).json["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "3150000 characters" in error["message"]
    assert elapsed < 2.0  # tokenizing 3 MB takes seconds here


def _stream_gaps(
    server: ServerProcess, tokenizer: TinyTokenizer, started: threading.Event
) -> list[float]:
    """Token arrival times of one long stream (which must end with [DONE])."""
    body = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Talk."}],
        "max_tokens": 400,
        "logit_bias": {str(eos): -100 for eos in tokenizer.eos_ids},
        "stream": True,
    }
    times: list[float] = []
    done = False
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, headers=AUTH, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                times.append(time.perf_counter())
                if len(times) == 20:
                    started.set()
    assert done, "the stream did not finish"
    return times


def test_a_20_mb_body_is_refused_fast_while_another_stream_flows(
    llama_server: ServerProcess, llama_tokenizer: TinyTokenizer
) -> None:
    started = threading.Event()
    result: dict[str, list[float]] = {}
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            result["times"] = _stream_gaps(llama_server, llama_tokenizer, started)
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(60)
    body = _chat("z" * 20_000_000)
    sent = time.perf_counter()
    response = httpx.post(
        f"{llama_server.base_url}/chat/completions", content=body, headers=AUTH, timeout=60
    )
    refused = time.perf_counter()
    thread.join(120)
    assert not failure, failure
    assert response.status_code == 413
    assert refused - sent < 1.0
    times = result["times"]
    during = [b - a for a, b in itertools.pairwise(times) if b >= sent and a <= refused]
    # The stream kept flowing: no gap while the body was refused as long as the refusal.
    assert max(during, default=0.0) < 0.5, during
