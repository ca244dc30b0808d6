"""A client that gives up on a whole (non-streamed) answer frees the engine at once: the
generation is aborted, the ledger says so, and the next request runs without waiting for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from e2e.common import LLAMA_MODEL, TinyTokenizer
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from support.server import ServerProcess, run_server


@pytest.fixture(scope="module")
def one_slot(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    data_dir = tmp_path_factory.mktemp("disconnect")
    with run_server(
        tiny_llama_dir,
        data_dir=data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=4096,
        extra_args=["--max-num-seqs", "1", "--no-embeddings"],
    ) as server:
        yield server, data_dir


def _body(tokenizer: TinyTokenizer, max_tokens: int) -> dict[str, Any]:
    return {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": max_tokens,
        "logit_bias": {str(eos): -100 for eos in tokenizer.eos_ids},
    }


def _aborted_rows(data_dir: Path) -> list[sa.Row[tuple[object, ...]]]:
    db = Database.open(None, data_dir)
    try:
        with db.connection() as conn:
            t = tables.usage_records
            return list(conn.execute(sa.select(t).where(t.c.status == "aborted")).all())
    finally:
        db.close()


def test_a_client_that_gives_up_frees_the_engine(
    one_slot: tuple[ServerProcess, Path], llama_tokenizer: TinyTokenizer
) -> None:
    server, data_dir = one_slot
    url = f"{server.base_url}/chat/completions"
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=1.5) as impatient:
        impatient.post(url, json=_body(llama_tokenizer, 3000))

    rows: list[sa.Row[tuple[object, ...]]] = []
    for _ in range(100):  # the ledger writes within 0.2 s of the abort
        rows = _aborted_rows(data_dir)
        if rows:
            break
        time.sleep(0.1)
    assert len(rows) == 1, "the abandoned request was not aborted"
    assert not rows[0].streamed

    # The one running slot is free again: a short request is answered at once.
    started = time.monotonic()
    with httpx.Client(timeout=60) as http:
        answer = http.post(url, json=_body(llama_tokenizer, 4))
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 4
    assert time.monotonic() - started < 10
