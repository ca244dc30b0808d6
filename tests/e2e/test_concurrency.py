"""Many requests at once, and clients that go away mid-stream."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.common import LLAMA_MODEL, MAX_MODEL_LEN, assert_same_counts
from support.contract import check_response, sdk_async_http_client
from support.server import ServerProcess, run_server


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Request {i}: describe bridge number {i * 7}."}]


def test_16_concurrent_requests(llama_server: ServerProcess, client: openai.OpenAI) -> None:
    params: dict[str, Any] = {"model": LLAMA_MODEL, "temperature": 0, "max_tokens": 12}

    async def all_at_once() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=llama_server.base_url,
            api_key=llama_server.api_key,
            max_retries=0,
            http_client=sdk_async_http_client(timeout=120),
        ) as aclient:
            calls = [
                aclient.chat.completions.create(messages=_messages(i), **params) for i in range(16)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(all_at_once())
    assert len(results) == 16
    # Batched decoding must not change greedy results: compare with one-at-a-time answers.
    for i in (0, 5, 15):
        alone = client.chat.completions.create(messages=_messages(i), **params)
        assert results[i].choices[0].message.content == alone.choices[0].message.content
        assert_same_counts(results[i].usage, alone.usage)
    assert len({result.id for result in results}) == 16


def _stream_timeline(server: ServerProcess, seed: int, marks: dict[str, float]) -> None:
    body = {
        "model": LLAMA_MODEL,
        "messages": _messages(seed),
        "max_tokens": 200,
        "temperature": 1,
        "seed": seed,
        "logit_bias": {},
        "stream": True,
    }
    with (
        httpx.Client(timeout=120) as http,
        http.stream(
            "POST", f"{server.base_url}/chat/completions", json=body, headers=server.auth_headers()
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and "first" not in marks:
                marks["first"] = time.monotonic()
    marks["done"] = time.monotonic()


def test_streams_progress_together(llama_server: ServerProcess) -> None:
    marks: list[dict[str, float]] = [{}, {}]
    threads = [
        threading.Thread(target=_stream_timeline, args=(llama_server, i, marks[i])) for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    a, b = marks
    assert "done" in a and "done" in b, "a stream did not finish"
    # each stream had produced output before the other one ended: neither waited its turn
    assert a["first"] < b["done"] and b["first"] < a["done"]


def _read_two_chunks_then_close_httpx(server: ServerProcess, body: dict[str, Any]) -> None:
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST", f"{server.base_url}/chat/completions", json=body, headers=server.auth_headers()
        ) as response,
    ):
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 2:
                break  # leaving the block closes the connection mid-stream


def _read_two_chunks_then_close_socket(server: ServerProcess, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    port = int(server.root_url.rsplit(":", 1)[1])
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < 2:
            data = sock.recv(4096)
            assert data, f"server closed the stream early: {received!r}"
            received += data
        assert received.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "disconnect", [_read_two_chunks_then_close_httpx, _read_two_chunks_then_close_socket]
)
def test_client_disconnect_mid_stream(
    llama_server: ServerProcess, client: openai.OpenAI, disconnect: Any
) -> None:
    long_stream = {
        "model": LLAMA_MODEL,
        "messages": _messages(99),
        "max_tokens": 450,
        "stream": True,
    }
    disconnect(llama_server, long_stream)

    started = time.monotonic()
    res = client.chat.completions.create(
        model=LLAMA_MODEL, messages=_messages(1), temperature=0, max_tokens=8
    )
    assert res.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - started < 60
    llama_server.assert_alive()
    response = httpx.get(f"{llama_server.root_url}/health", timeout=10)
    assert response.status_code == 200
    check_response(response)


@pytest.fixture(scope="module")
def single_slot_server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    """A server that decodes one sequence at a time: whatever runs, the next request waits."""
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=MAX_MODEL_LEN,
        extra_args=["--max-num-seqs", "1"],
    ) as server:
        yield server


def test_aborted_request_stops_running(single_slot_server: ServerProcess) -> None:
    url = f"{single_slot_server.base_url}/chat/completions"
    long_request = {
        "model": LLAMA_MODEL,
        "messages": _messages(3),
        "max_tokens": MAX_MODEL_LEN - 64,
        "temperature": 0,  # the tiny model loops greedily, so it never ends early
    }
    started = time.monotonic()
    full = httpx.post(url, json=long_request, timeout=120)
    full_seconds = time.monotonic() - started
    assert full.json()["choices"][0]["finish_reason"] == "length"

    _read_two_chunks_then_close_httpx(single_slot_server, {**long_request, "stream": True})
    started = time.monotonic()
    short = httpx.post(url, json={**long_request, "max_tokens": 2}, timeout=120)
    waited = time.monotonic() - started
    assert short.status_code == 200
    # With one decoding slot, a request that kept running would hold the next one back for
    # most of a full generation.
    assert waited < full_seconds / 2, (
        f"next request waited {waited:.2f} s, a full run takes {full_seconds:.2f} s"
    )
