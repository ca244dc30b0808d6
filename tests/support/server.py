"""Run a real kakehashi server (or any HTTP process) for the duration of a test.

::

    with run_server(model_dir, data_dir=tmp, served_model_name="tiny", api_keys=["sk-test"]) as srv:
        OpenAI(base_url=srv.base_url, api_key=srv.api_key)...

The process listens on 127.0.0.1 on a free port; start-up waits (bounded) for ``GET /health``
to answer 200, and a process that dies or never becomes healthy fails the test with its output.
At exit the process gets SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "RunningProcess",
    "ServerProcess",
    "free_port",
    "run_fake_upstream",
    "run_process",
    "run_server",
]

_STOP_GRACE_SECONDS = 15.0
_OUTPUT_TAIL_CHARS = 8000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningProcess:
    """A started process serving HTTP at ``root_url``, with its combined stdout/stderr log."""

    process: subprocess.Popen[bytes]
    root_url: str
    log_path: Path

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr), possibly truncated."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:  # the process has been stopped and its log removed
            return "(output no longer available)"
        if len(text) > _OUTPUT_TAIL_CHARS:
            return "[...]\n" + text[-_OUTPUT_TAIL_CHARS:]
        return text

    def assert_alive(self) -> None:
        """Fail with the process output if it has exited."""
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"server exited with code {code}; output:\n{self.output()}")


@dataclass
class ServerProcess(RunningProcess):
    """A running kakehashi server."""

    model: str | None = None  # the served model id, if one was given
    api_key: str | None = None  # the first accepted key, None when the server is open

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"{self.root_url}/v1"

    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` header for the first key (empty when the server is open)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _wait_healthy(running: RunningProcess, health_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = running.root_url + health_path
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        running.assert_alive()
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.TransportError as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(0.1)
    raise AssertionError(
        f"{url} not healthy after {timeout:.0f} s ({last_problem}); output:\n{running.output()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, then SIGKILL after a grace period; True if it had to be killed."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_GRACE_SECONDS)
        return True
    return False


@contextlib.contextmanager
def run_process(
    argv: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    health_path: str = "/health",
    startup_timeout: float = 60.0,
    cwd: str | Path | None = None,
    clean_exit: bool = False,
    may_exit: bool = False,
) -> Iterator[RunningProcess]:
    """Start ``argv`` (which must listen on 127.0.0.1:``port``), wait for ``health_path`` to
    answer 200, yield it, and stop it afterwards.

    Leaving the block fails if the process died meanwhile (unless ``may_exit``: the test
    stopped it itself), and with ``clean_exit`` also if it did not exit on SIGTERM within the
    grace period (with status 0 or by the signal itself).
    """
    with tempfile.TemporaryDirectory(prefix="kakehashi-proc-") as log_dir:
        log_path = Path(log_dir) / "output.log"
        with log_path.open("wb") as log:
            # A file, not a pipe: a chatty server must never block on a full pipe buffer.
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        running = RunningProcess(process, f"http://127.0.0.1:{port}", log_path)
        stopped = False
        try:
            _wait_healthy(running, health_path, startup_timeout)
            yield running
            if not may_exit:
                running.assert_alive()  # a server that died under the tests is a failure too
            killed = _stop(process)
            stopped = True
            # uvicorn re-raises SIGTERM after its graceful shutdown, hence -SIGTERM is clean too
            if clean_exit and (killed or process.returncode not in (0, -signal.SIGTERM)):
                how = "had to be killed" if killed else f"exited with {process.returncode}"
                raise AssertionError(f"on SIGTERM the server {how}; output:\n{running.output()}")
        finally:
            if not stopped:
                _stop(process)


def server_command(*args: str) -> list[str]:
    """The command line that runs ``kakehashi <args>`` with this interpreter."""
    return [sys.executable, "-m", "kakehashi.cli.main", *args]


def server_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server: ours without ``KAKEHASHI_*`` settings, data in ``data_dir``,
    no network access to the Hugging Face hub."""
    # OPENAI_API_KEY would route OpenAI's model ids to OpenAI.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KAKEHASHI_") and key != "OPENAI_API_KEY"
    }
    env.update(
        KAKEHASHI_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def run_server(
    model_dir: str | Path | None,
    *,
    data_dir: Path,
    served_model_name: str | None = None,
    aliases: Sequence[str] = (),
    api_keys: Sequence[str] = (),
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
    may_exit: bool = False,
) -> Iterator[ServerProcess]:
    """Run ``kakehashi serve`` on a free port of 127.0.0.1 and yield it once healthy
    (``may_exit``: the test stops it itself)."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if model_dir is not None:
        args += ["--model", str(model_dir)]
    if served_model_name is not None:
        args += ["--served-model-name", served_model_name]
    for alias in aliases:
        args += ["--alias", alias]
    for key in api_keys:
        args += ["--api-key", key]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    args += list(extra_args)
    with run_process(
        server_command(*args),
        port=port,
        env=server_env(data_dir, env),
        startup_timeout=startup_timeout,
        clean_exit=True,
        may_exit=may_exit,
    ) as running:
        yield ServerProcess(
            process=running.process,
            root_url=running.root_url,
            log_path=running.log_path,
            model=served_model_name,
            api_key=api_keys[0] if api_keys else None,
        )


FAKE_UPSTREAM = Path(__file__).with_name("fake_upstream.py")


@contextlib.contextmanager
def run_fake_upstream(
    name: str, *, chunks: int = 8, delay: float = 0.0
) -> Iterator[RunningProcess]:
    """Run the fault-injecting OpenAI-compatible server (``fake_upstream.py``) on a free port."""
    port = free_port()
    argv = [sys.executable, str(FAKE_UPSTREAM), "--port", str(port), "--name", name]
    argv += ["--chunks", str(chunks), "--delay", str(delay)]
    with run_process(argv, port=port, startup_timeout=30) as running:
        yield running
