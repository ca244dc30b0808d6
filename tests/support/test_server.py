"""The process harness starts a real HTTP process, waits for health, and always stops it."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from support.server import free_port, run_process


def _http_server(directory: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
    ]


def test_waits_for_health_then_stops(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    with run_process(_http_server(tmp_path, port), port=port, startup_timeout=30) as running:
        assert running.root_url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{running.root_url}/health").text == "ok"
        running.assert_alive()
        process = running.process
    assert process.returncode is not None  # stopped on exit


def test_process_that_dies_fails_with_its_output(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('boom: no model here')"]
    with (
        pytest.raises(AssertionError, match=r"(?s)exited with code 1.*boom: no model here"),
        run_process(argv, port=free_port(), startup_timeout=30),
    ):
        pass


def test_process_that_never_gets_healthy_times_out(tmp_path: Path) -> None:
    port = free_port()  # serves 404 for /health: nothing named "health" in the directory
    with (
        pytest.raises(AssertionError, match="not healthy after 2 s"),
        run_process(_http_server(tmp_path, port), port=port, startup_timeout=2),
    ):
        pass


_EXITS_3_ON_SIGTERM = """
import signal, sys
from http.server import HTTPServer, SimpleHTTPRequestHandler
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
HTTPServer(("127.0.0.1", int(sys.argv[1])), SimpleHTTPRequestHandler).serve_forever()
"""


def test_unclean_exit_is_reported_when_asked(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    argv = [sys.executable, "-c", _EXITS_3_ON_SIGTERM, str(port)]
    with (
        pytest.raises(AssertionError, match="on SIGTERM the server exited with 3"),
        run_process(argv, port=port, clean_exit=True, cwd=tmp_path),
    ):
        pass
    port = free_port()  # dying of SIGTERM itself is a clean exit
    with run_process(_http_server(tmp_path, port), port=port, clean_exit=True):
        pass


def test_death_during_the_block_is_reported(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    with (
        pytest.raises(AssertionError, match="server exited with code"),
        run_process(_http_server(tmp_path, port), port=port) as running,
    ):
        running.process.kill()
        running.process.wait()
