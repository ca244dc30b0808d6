"""Helpers of the batch tests: input lines, polling a batch, reading the ledger."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import requests
import sqlalchemy as sa

from e2e.common import LLAMA_MODEL, MAX_MODEL_LEN
from support.server import free_port, server_command, server_env


def batch_lines(n: int, *, model: str = LLAMA_MODEL, max_tokens: int = 3, start: int = 0) -> bytes:
    """``n`` chat requests as batch input lines."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Say something about {i}."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            }
        ).encode()
        + b"\n"
        for i in range(start, start + n)
    )


def wait_for(client: openai.OpenAI, batch_id: str, *statuses: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.1)


def ledger(data_dir: Path, batch_id: str) -> list[Any]:
    """The server's ledger rows of ``batch_id`` (its SQLite file, read directly)."""
    db = sa.create_engine(f"sqlite:///{data_dir / 'kakehashi.db'}")
    try:
        with db.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT * FROM usage_records WHERE batch_id = :b"), {"b": batch_id}
            )
            return list(rows.mappings())
    finally:
        db.dispose()


@contextlib.contextmanager
def killable_server(
    model_dir: Path,
    data_dir: Path,
    *,
    api_key: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``kakehashi serve`` on the tiny Llama that a test may kill (a batch lease of 2 s, so a
    restart or another replica takes a dead one's batches over quickly); yields the process and
    its base URL."""
    port = free_port()
    argv = server_command(
        "serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
        "--served-model-name", LLAMA_MODEL, "--api-key", api_key,
        "--max-model-len", str(MAX_MODEL_LEN),
    )  # fmt: skip
    env = server_env(data_dir, {"KAKEHASHI_BATCH_LEASE_SECONDS": "2", **(env or {})})
    log = (data_dir / f"server-{port}.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (data_dir / f"server-{port}.log").read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield process, f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()
