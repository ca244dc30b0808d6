"""A server killed with SIGKILL mid-batch, then started again on the same data directory: the
batch resumes, every line is in the output exactly once and billed exactly once; a batch whose
window passed while the server was down ends expired, its finished lines kept."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from e2e.batching import batch_lines, killable_server, ledger, wait_for

KEY = "sk-durable-batches"
pytestmark = pytest.mark.slow


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30)


def output_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in sdk.files.content(file_id).text.splitlines()]


def test_kill_9_mid_batch_then_restart(tiny_llama_dir: Path, tmp_path: Path) -> None:
    with killable_server(tiny_llama_dir, tmp_path, api_key=KEY) as (process, base_url):
        sdk = client(base_url)
        running = sdk.batches.create(
            input_file_id=sdk.files.create(
                file=("a.jsonl", batch_lines(300, max_tokens=12)), purpose="batch"
            ).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        deadline = time.monotonic() + 60
        while True:
            counts = sdk.batches.retrieve(running.id).request_counts
            if counts is not None and counts.completed >= 30:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A second batch, to expire while the server is down.
        late = sdk.batches.create(
            input_file_id=sdk.files.create(
                file=("b.jsonl", batch_lines(50, max_tokens=12)), purpose="batch"
            ).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        wait_for(sdk, late.id, "in_progress")
        process.kill()  # SIGKILL: no shutdown of any kind
        process.wait(timeout=10)
    before = sdk_counts(tmp_path, running.id)
    assert 30 <= before < 300
    # The window of the second batch passes while the server is down.
    db = sa.create_engine(f"sqlite:///{tmp_path / 'kakehashi.db'}")
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE batches SET expires_at = :t WHERE id = :b"),
            {"t": int(time.time()) - 1, "b": late.id},
        )
    db.dispose()

    with killable_server(tiny_llama_dir, tmp_path, api_key=KEY) as (_process, base_url):
        sdk = client(base_url)
        done = wait_for(sdk, running.id, "completed", timeout=120)
        expired = wait_for(sdk, late.id, "expired", timeout=30)
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (300, 300)
        lines = output_lines(sdk, done.output_file_id)
        custom_ids = [x["custom_id"] for x in lines]
        assert len(custom_ids) == 300 and set(custom_ids) == {f"req-{i}" for i in range(300)}
        assert expired.expired_at is not None and expired.request_counts is not None
        finished = expired.request_counts.completed
        kept = output_lines(sdk, expired.output_file_id) if finished else []
        unrun = output_lines(sdk, expired.error_file_id)
        assert len(kept) == finished and len(kept) + len(unrun) == 50
        assert {x["error"]["code"] for x in unrun} == {"batch_expired"}
    # Exactly one ledger row per line that ran, never two.
    rows = ledger(tmp_path, running.id)
    assert len(rows) == 300 and len({r["request_id"] for r in rows}) == 300
    assert len(ledger(tmp_path, late.id)) == finished


def sdk_counts(data_dir: Path, batch_id: str) -> int:
    """Completed lines as the database holds them (the server is down)."""
    db = sa.create_engine(f"sqlite:///{data_dir / 'kakehashi.db'}")
    try:
        with db.connect() as conn:
            found = conn.execute(
                sa.text("SELECT completed FROM batches WHERE id = :b"), {"b": batch_id}
            ).scalar_one()
            return int(found)
    finally:
        db.dispose()
