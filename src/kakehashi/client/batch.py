"""Batches from the client's side, on the official ``openai`` SDK: prepare a JSONL file, upload
it, create the batch, follow it, and fetch its results.

A line may be a full batch request (``{"custom_id", "method", "url", "body"}``) or just a
request body; :func:`prepare_input` fills in what is missing: the ``model`` (from ``-m``), the
``method``, the ``url`` (the batch's endpoint) and a ``custom_id`` (``line-N``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kakehashi.client.errors import ClientError, from_openai

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def prepare_input(source: Path, out: IO[bytes], *, model: str | None, endpoint: str) -> int:
    """Write ``source``'s requests to ``out`` as batch lines, filling in what they lack; the
    number of lines. A line that is not a JSON object, or lacks a model when ``model`` is not
    given, is a :class:`ClientError` naming the line."""
    count = 0
    with source.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                raise ClientError(f"{source}:{number}: not a JSON line") from None
            if not isinstance(data, dict):
                raise ClientError(f"{source}:{number}: a line must be a JSON object")
            if "body" not in data:  # a bare request body
                data = {"body": data}
            body = data["body"]
            if not isinstance(body, dict):
                raise ClientError(f"{source}:{number}: 'body' must be a JSON object")
            if "model" not in body:
                if model is None:
                    raise ClientError(
                        f"{source}:{number}: the request names no model; pass -m MODEL"
                    )
                body["model"] = model
            data.setdefault("custom_id", f"line-{number}")
            data.setdefault("method", "POST")
            data.setdefault("url", endpoint)
            out.write(json.dumps(data, ensure_ascii=False).encode() + b"\n")
            count += 1
    if count == 0:
        raise ClientError(f"{source}: no requests in the file")
    return count


def submit(
    client: OpenAI,
    source: Path,
    *,
    model: str | None,
    endpoint: str = "/v1/chat/completions",
    metadata: dict[str, str] | None = None,
    scratch: Path,
) -> Batch:
    """Prepare ``source`` (in ``scratch``), upload it and create the batch."""
    if endpoint not in ENDPOINTS:
        raise ClientError(f"unsupported endpoint {endpoint!r}; use one of {', '.join(ENDPOINTS)}")
    prepared = scratch / f"{source.stem}.batch.jsonl"
    with prepared.open("wb") as out:
        prepare_input(source, out, model=model, endpoint=endpoint)
    try:
        with prepared.open("rb") as upload:
            uploaded = client.files.create(file=(source.name, upload), purpose="batch")
        return client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata,
        )
    except Exception as exc:
        raise from_openai(exc) from None
    finally:
        prepared.unlink(missing_ok=True)


def retrieve(client: OpenAI, batch_id: str) -> Batch:
    """The batch ``batch_id`` as it is now."""
    try:
        return client.batches.retrieve(batch_id)
    except Exception as exc:
        raise from_openai(exc) from None


def wait(
    client: OpenAI,
    batch_id: str,
    *,
    on_update: Callable[[Batch], None] = lambda _batch: None,
    every: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Batch:
    """Poll until the batch is over, calling ``on_update`` with each reading."""
    while True:
        batch = retrieve(client, batch_id)
        on_update(batch)
        if batch.status in FINAL_STATUSES:
            return batch
        sleep(every)


def download(client: OpenAI, file_id: str, out: Path) -> int:
    """Write the content of ``file_id`` to ``out``; its size in bytes."""
    try:
        content = client.files.content(file_id)
    except Exception as exc:
        raise from_openai(exc) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    content.write_to_file(out)
    return out.stat().st_size


def list_batches(client: OpenAI, *, limit: int) -> list[Batch]:
    """The newest ``limit`` batches."""
    try:
        return list(client.batches.list(limit=min(limit, 100)).data)[:limit]
    except Exception as exc:
        raise from_openai(exc) from None


def cancel(client: OpenAI, batch_id: str) -> Batch:
    """Ask the server to cancel ``batch_id``."""
    try:
        return client.batches.cancel(batch_id)
    except Exception as exc:
        raise from_openai(exc) from None


def counts(batch: Batch) -> dict[str, Any]:
    """The batch's request counts (zeros while it is validating)."""
    found = batch.request_counts
    if found is None:
        return {"total": 0, "completed": 0, "failed": 0}
    return {"total": found.total, "completed": found.completed, "failed": found.failed}
