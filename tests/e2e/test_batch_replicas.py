"""Two server replicas sharing one PostgreSQL (and one files directory): each batch is worked
by exactly one of them at a time, both work, and when one is killed mid-batch the other takes
its batches over; every line ends up in the output once and in the ledger once."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa

from e2e.batching import batch_lines, killable_server, wait_for
from support.services import PostgresServer, missing_services, postgres_server

KEY = "sk-replicas"
LINES = 250  # long enough that the killed replica is mid-batch
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    missing = [name for name in missing_services() if name in ("initdb", "postgres")]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with postgres_server() as server:
        yield server


def test_two_replicas_share_batches_and_survive_one_dying(
    tiny_llama_dir: Path, tmp_path: Path, pg: PostgresServer
) -> None:
    url = pg.create_database("replicas")
    # One batch at a time each: the other replica takes the next one at its next look.
    env = {"KAKEHASHI_DATABASE_URL": url, "KAKEHASHI_BATCH_MAX_BATCHES": "1"}
    db = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with (
        killable_server(tiny_llama_dir, tmp_path, api_key=KEY, env=env) as (first, first_url),
        killable_server(tiny_llama_dir, tmp_path, api_key=KEY, env=env) as (_second, second_url),
    ):
        sdk_first = openai.OpenAI(base_url=first_url, api_key=KEY, max_retries=0, timeout=30)
        sdk_second = openai.OpenAI(base_url=second_url, api_key=KEY, max_retries=0, timeout=30)
        ids = []
        for n in range(4):
            uploaded = sdk_first.files.create(
                file=(f"{n}.jsonl", batch_lines(LINES, max_tokens=16)), purpose="batch"
            )
            ids.append(
                sdk_first.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                ).id
            )
        # Both replicas take batches; a batch has one holder at a time.
        holders: dict[str, set[str]] = {}
        deadline = time.monotonic() + 60
        while len({owner for owners in holders.values() for owner in owners}) < 2:
            with db.connect() as conn:
                for batch_id, owner in conn.execute(
                    sa.text("SELECT id, lease_owner FROM batches WHERE lease_owner IS NOT NULL")
                ):
                    holders.setdefault(batch_id, set()).add(owner)
            assert time.monotonic() < deadline, holders
            time.sleep(0.05)
        first.kill()  # SIGKILL mid-batch
        first.wait(timeout=10)
        with db.connect() as conn:
            orphaned = conn.execute(
                sa.text(
                    "SELECT id FROM batches WHERE lease_owner LIKE :me AND status = 'in_progress'"
                ),
                {"me": f"%:{first.pid}:%"},
            ).all()
        assert orphaned, "the killed replica held no batch: nothing to take over"
        for batch_id in ids:
            done = wait_for(sdk_second, batch_id, "completed", timeout=120)
            assert done.request_counts is not None
            assert (done.request_counts.total, done.request_counts.completed) == (LINES, LINES)
            assert done.output_file_id is not None
            lines = sdk_second.files.content(done.output_file_id).text.splitlines()
            custom_ids = [json.loads(x)["custom_id"] for x in lines]
            assert sorted(custom_ids) == sorted(f"req-{i}" for i in range(LINES))
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT batch_id, count(*), count(DISTINCT request_id) FROM usage_records "
                "GROUP BY batch_id"
            )
        ).all()
    db.dispose()
    assert sorted(rows) == sorted((batch_id, LINES, LINES) for batch_id in ids)
