"""A batch of 50,000 lines (OpenAI's limit) on the tiny Llama, through a real server: it
finishes, and everything is counted right: request_counts, one output line per input line,
one ledger row per line at the batch prices configured for the model, and the usage totals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from e2e.batching import ledger
from e2e.common import LLAMA_MODEL, MAX_MODEL_LEN
from support.contract import sdk_http_client
from support.server import run_server

KEY = "sk-batch-scale"
LINES = 50_000
BATCH_INPUT_PRICE, BATCH_OUTPUT_PRICE = 0.3, 1.1  # USD per 1M tokens; not half the others
pytestmark = pytest.mark.slow


def cheap_lines(n: int) -> bytes:
    """``n`` chat lines of a few prompt tokens and one completion token each."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": LLAMA_MODEL,
                    "messages": [{"role": "user", "content": str(i % 97)}],
                    "max_tokens": 1,
                },
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for i in range(n)
    )


def test_fifty_thousand_lines_finish_and_are_counted_right(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "kakehashi.toml"
    config.write_text(
        f"""
[[keys]]
key = "{KEY}"
name = "bulk"

[[models]]
id = "{LLAMA_MODEL}"
input_price = 4.0
output_price = 16.0
batch_input_price = {BATCH_INPUT_PRICE}
batch_output_price = {BATCH_OUTPUT_PRICE}
"""
    )
    with (
        run_server(
            tiny_llama_dir,
            data_dir=tmp_path,
            served_model_name=LLAMA_MODEL,
            max_model_len=MAX_MODEL_LEN,
            env={"KAKEHASHI_CONFIG": str(config)},
        ) as server,
        openai.OpenAI(
            base_url=server.base_url,
            api_key=KEY,
            max_retries=0,
            http_client=sdk_http_client(timeout=120),
        ) as sdk,
    ):
        uploaded = sdk.files.create(file=("bulk.jsonl", cheap_lines(LINES)), purpose="batch")
        created = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        started = time.monotonic()
        seen: set[str] = set()
        while True:
            batch = sdk.batches.retrieve(created.id)
            seen.add(batch.status)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            assert time.monotonic() - started < 240, f"still {batch.status}: {batch}"
            time.sleep(0.25)
        assert batch.status == "completed", batch
        assert "in_progress" in seen
        counts = batch.request_counts
        assert counts is not None
        assert (counts.total, counts.completed, counts.failed) == (LINES, LINES, 0)
        assert batch.error_file_id is None and batch.output_file_id is not None
        output = sdk.files.content(batch.output_file_id).text.splitlines()
    assert len(output) == LINES
    prompt = completion = 0
    custom_ids = set()
    for text in output:
        line = json.loads(text)
        custom_ids.add(line["custom_id"])
        assert line["response"]["status_code"] == 200
        usage = line["response"]["body"]["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    assert custom_ids == {f"c{i}" for i in range(LINES)}
    assert completion == LINES
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt, completion)
    rows = ledger(tmp_path, created.id)
    assert len(rows) == LINES and len({r["request_id"] for r in rows}) == LINES
    assert {r["status"] for r in rows} == {"success"}
    assert sum(r["prompt_tokens"] for r in rows) == prompt
    for row in rows[:100]:  # each row at the configured batch prices
        expected = (
            row["prompt_tokens"] * BATCH_INPUT_PRICE + row["completion_tokens"] * BATCH_OUTPUT_PRICE
        ) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)
    total = (prompt * BATCH_INPUT_PRICE + completion * BATCH_OUTPUT_PRICE) / 1e6
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(total)
