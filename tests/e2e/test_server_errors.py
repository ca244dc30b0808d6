"""A 500 leaves the keep-alive connection usable and logs one traceback (issue 14, defect 2),
against a real server process whose backend raises an unexpected exception on request."""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fault_server import EXPLODE
from support.server import RunningProcess, free_port, run_process, server_env

FAULT_SERVER = Path(__file__).resolve().parents[1] / "support" / "fault_server.py"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    port = free_port()
    env = server_env(tmp_path_factory.mktemp("fault-data"))
    with run_process(
        [sys.executable, str(FAULT_SERVER), str(port)], port=port, env=env, clean_exit=True
    ) as running:
        yield running


def _chat(content: str) -> bytes:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict, dict[str, str]]:
    conn.request(
        "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    payload = json.loads(response.read())
    return response.status, payload, {k.lower(): v for k, v in response.getheaders()}


def test_a_500_keeps_the_connection_and_logs_one_traceback(fault_server: RunningProcess) -> None:
    host, port = fault_server.root_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(3):  # each 500 is followed by a good answer on the same connection
            status, payload, headers = _post(conn, _chat(EXPLODE))
            assert status == 500
            assert payload["error"]["type"] == "server_error"
            assert set(payload["error"]) == {"message", "type", "param", "code"}
            assert "x-request-id" in headers
            assert headers.get("connection") != "close"
            status, payload, _ = _post(conn, _chat("hello"))
            assert status == 200, payload
            assert payload["choices"][0]["message"]["content"]
        sock = conn.sock
        assert sock is not None  # still the first connection: never closed nor reset
    finally:
        conn.close()
    log = fault_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert log.count("Traceback (most recent call last)") == 3, log  # one per failure
    assert log.count("RuntimeError: an unexpected failure") == 3
    assert "Exception in ASGI application" not in log
