"""The kakehashi server as a subprocess of the serve benchmark: start, wait, measure, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0  # loading a 0.5B model on a busy 2-core machine can take a while
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """The command-line flags the benchmark serves a model with."""

    model_dir: Path
    max_model_len: int = 4096
    threads: int = 2
    extra_args: tuple[str, ...] = ("--no-embeddings",)


@dataclass(slots=True)
class Server:
    """A running server: its process, address and log file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def peak_rss_mb(self) -> float:
        """Peak resident set (``VmHWM``) of the server and any child processes, in MiB."""
        return sum(_vm_hwm_kib(pid) for pid in _process_tree(self.process.pid)) / 1024

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server's main thread (its event loop) and by the whole
        process (the engine's threads included), in seconds (zeros where ``/proc`` is not)."""
        pid = self.process.pid
        return _cpu_seconds(f"/proc/{pid}/task/{pid}/stat"), _cpu_seconds(f"/proc/{pid}/stat")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class CpuMeter:
    """The server's CPU time over a stretch of the benchmark: its main thread (the event loop,
    which runs the HTTP layer and SSE) and the whole process (the engine's threads too)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.used = (0.0, 0.0)  # (main thread, process) seconds of the last measured stretch

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        loop, process = self.server.cpu_seconds()
        yield
        loop_after, process_after = self.server.cpu_seconds()
        self.used = (loop_after - loop, process_after - process)

    def per_token(self, tokens: int) -> dict[str, float]:
        """Microseconds of CPU per streamed token, as figures of a phase."""
        loop, process = self.used
        return {
            "loop_cpu_us_per_token": 1e6 * loop / tokens,
            "server_cpu_us_per_token": 1e6 * process / tokens,
        }


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_command(options: ServerOptions, port: int) -> list[str]:
    """``kakehashi serve`` for the benchmark: loopback only, quiet log, no embedding model
    unless ``extra_args`` say otherwise."""
    return [
        sys.executable,
        "-m",
        "kakehashi.cli.main",
        "serve",
        "--model",
        str(options.model_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--max-model-len",
        str(options.max_model_len),
        "--threads",
        str(options.threads),
        *options.extra_args,
        "--log-level",
        "warning",
    ]


@contextlib.contextmanager
def running_server(options: ServerOptions, work_dir: Path) -> Iterator[Server]:
    """Start the server with its data dir in ``work_dir``; stop it (SIGTERM, then kill) after."""
    # A clean environment: no API keys or other KAKEHASHI_* settings of the caller leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKEHASHI_")}
    env["KAKEHASHI_DATA_DIR"] = str(work_dir / "data")
    port = free_port()
    log_path = work_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(options, port), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    server = Server(process, port, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        stop(server)


def stop(server: Server) -> None:
    """Ask the server to shut down; kill it if it has not within :data:`STOP_TIMEOUT_S`."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"{server.base_url}/health"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the server did not become healthy in {START_TIMEOUT_S:.0f} s")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``; just ``pid`` elsewhere)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        try:
            found = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        pids.extend(found)
        frontier.extend(found)
    return pids


def _vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(stat_path: str) -> float:
    """``utime + stime`` of a ``/proc`` stat file, in seconds."""
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
