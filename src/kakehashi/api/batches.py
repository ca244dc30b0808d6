"""The Batches API: ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}`` and
``POST /v1/batches/{id}/cancel``. A batch is its creator's; the runner works it in the
background (on whichever replica holds its lease)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from kakehashi.api.deps import ContextDep, parse_body
from kakehashi.api.files import get_batch_service
from kakehashi.api.listing import list_page, query_int
from kakehashi.wire.batches import CreateBatchRequest

router = APIRouter(tags=["batches"])


@router.post("/v1/batches")
async def create_batch(http: Request, ctx: ContextDep) -> dict[str, Any]:
    """Create a batch from an uploaded ``batch`` file."""
    body = await parse_body(http, CreateBatchRequest)
    expires = body.output_expires_after
    batch = await run_in_threadpool(
        get_batch_service(http).create,
        ctx.principal,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_expires_after=expires.seconds if expires is not None else None,
    )
    return batch.to_dict()


@router.get("/v1/batches")
async def list_batches(http: Request, ctx: ContextDep) -> dict[str, Any]:
    """The caller's batches, newest first."""
    limit = query_int(http, "limit", default=20, low=1, high=100)
    page, more = await run_in_threadpool(
        get_batch_service(http).batches.page,
        owner=ctx.principal.key_id,
        after=http.query_params.get("after"),
        limit=limit,
    )
    return list_page([b.to_dict() for b in page], more)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, http: Request, ctx: ContextDep) -> dict[str, Any]:
    """One of the caller's batches."""
    batch = await run_in_threadpool(
        get_batch_service(http).batches.get, batch_id, owner=ctx.principal.key_id
    )
    return batch.to_dict()


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, http: Request, ctx: ContextDep) -> dict[str, Any]:
    """Cancel one of the caller's batches: ``cancelling`` now, ``cancelled`` within seconds."""
    batch = await run_in_threadpool(
        get_batch_service(http).cancel, batch_id, owner=ctx.principal.key_id
    )
    return batch.to_dict()
