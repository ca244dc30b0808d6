"""Admission is honest (issue 14, defects 6, 7 and 10): a request is refused only when every
running slot and every place in the queue is taken; the refusal is a 503 with Retry-After
decided before any header, never an error frame inside a 200 stream; refusals are logged as
summarised warnings."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.common import LLAMA_MODEL, TinyTokenizer
from support.contract import check_response
from support.openapi import validate
from support.server import ServerProcess, run_server

SLOTS, QUEUE = 3, 2
CAPACITY = SLOTS + QUEUE


@pytest.fixture(scope="module")
def small_server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=4096,
        extra_args=[
            *("--max-num-seqs", str(SLOTS), "--max-queue-len", str(QUEUE)),
            "--no-embeddings",
        ],
    ) as server:
        yield server


def _body(tokenizer: TinyTokenizer, max_tokens: int, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Talk for a while."}],
        "max_tokens": max_tokens,
        "logit_bias": {str(eos): -100 for eos in tokenizer.eos_ids},
        "stream": stream,
    }


@dataclass
class Outcome:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    frames: list[str] = field(default_factory=list)
    body: bytes = b""


def _burst(server: ServerProcess, body: dict[str, Any], count: int) -> list[Outcome]:
    """``count`` streaming requests released at the same moment, each read to the end."""
    barrier = threading.Barrier(count)
    outcomes = [Outcome() for _ in range(count)]

    def one(outcome: Outcome) -> None:
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            url = f"{server.base_url}/chat/completions"
            with http.stream("POST", url, json=body) as response:
                outcome.status = response.status_code
                outcome.headers = dict(response.headers)
                if response.status_code == 200:
                    outcome.frames = [line for line in response.iter_lines() if line]
                else:
                    outcome.body = response.read()

    threads = [threading.Thread(target=one, args=(o,)) for o in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return outcomes


def _assert_honest(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.status == 200:  # a stream that was admitted runs to its end
            assert outcome.frames[-1] == "data: [DONE]", outcome.frames[-3:]
            assert not any('"error"' in frame for frame in outcome.frames)
        else:
            assert outcome.status == 503, outcome.body
            assert outcome.headers["retry-after"] == "1"
            body = json.loads(outcome.body)
            validate("ErrorResponse", body)
            assert body["error"]["code"] == "engine_overloaded"


def test_a_burst_that_fits_slots_and_queue_is_all_served(
    small_server: ServerProcess, llama_tokenizer: TinyTokenizer
) -> None:
    for _ in range(3):
        outcomes = _burst(small_server, _body(llama_tokenizer, 40), CAPACITY)
        _assert_honest(outcomes)
        assert [o.status for o in outcomes] == [200] * CAPACITY


def test_a_burst_beyond_capacity_gets_503s_before_any_header(
    small_server: ServerProcess, llama_tokenizer: TinyTokenizer
) -> None:
    outcomes = _burst(small_server, _body(llama_tokenizer, 300), CAPACITY + 7)
    _assert_honest(outcomes)
    served = sum(o.status == 200 for o in outcomes)
    assert CAPACITY <= served < CAPACITY + 7


def test_a_full_server_refuses_with_retry_after_and_logs_a_summary(
    small_server: ServerProcess, llama_tokenizer: TinyTokenizer
) -> None:
    long = _body(llama_tokenizer, 3000)
    with httpx.Client(timeout=120) as http:
        url = f"{small_server.base_url}/chat/completions"
        streams = [http.stream("POST", url, json=long) for _ in range(CAPACITY)]
        opened = []
        try:
            for stream in streams:
                response = stream.__enter__()
                opened.append(stream)
                assert response.status_code == 200
            for stream_flag in (True, False, True, False) * 5:
                with httpx.Client(timeout=60) as other:
                    refused = other.post(url, json=_body(llama_tokenizer, 4, stream=stream_flag))
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                error = check_response(refused).json["error"]
                assert error["code"] == "engine_overloaded"
                assert "retry" in error["message"]
        finally:
            for stream in opened:  # disconnecting aborts the long generations
                stream.__exit__(None, None, None)
    log = small_server.output()
    refusals = [line for line in log.splitlines() if "refused:" in line]
    assert refusals and all(line.startswith("WARNING") for line in refusals), refusals
    assert len(refusals) <= 3  # 20 refusals, summarised: at most one line per 10 s
    assert "ERROR" not in log
