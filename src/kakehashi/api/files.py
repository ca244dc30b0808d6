"""The Files API: ``POST /v1/files`` (multipart), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content`` and ``DELETE /v1/files/{id}``. A file is its uploader's: any
other key gets the same 404 as for a file that does not exist."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from kakehashi.api.deps import ContextDep
from kakehashi.api.listing import list_page, query_int, query_order
from kakehashi.api.multipart import read_form
from kakehashi.errors import InvalidRequestError
from kakehashi.platform.batches.service import BatchService
from kakehashi.platform.files import (
    CREATE_PURPOSES,
    OUTPUT_PURPOSES,
    FileWriter,
    check_expires_after,
    check_purpose,
    too_large,
)

router = APIRouter(tags=["files"])

UPLOAD_PATH = "/v1/files"
"""Where files are uploaded: bodies up to the file size limit, not the server's body limit."""

# Multipart framing around the file: a request this much over the limit is refused unread.
_FRAMING_ALLOWANCE = 64 * 1024


def get_batch_service(request: Request) -> BatchService:
    """The app's files and batches."""
    return cast(BatchService, request.app.state.batch_service)


@router.post(UPLOAD_PATH)
async def create_file(http: Request, ctx: ContextDep) -> dict[str, Any]:
    """Upload a file: streamed to disk, at most 512 MB."""
    service = get_batch_service(http)
    files = service.files
    declared = http.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > files.max_bytes + _FRAMING_ALLOWANCE:
        raise too_large(files.max_bytes)
    opened: list[FileWriter] = []

    def open_sink() -> FileWriter:
        opened.append(files.writer())
        return opened[-1]

    try:
        form = await read_form(http.stream(), http.headers.get("content-type"), open_sink)
        purpose = check_purpose(form.fields.get("purpose"))
        expires_after = check_expires_after(
            form.fields.get("expires_after[anchor]"), form.fields.get("expires_after[seconds]")
        )
        if not opened or form.filename is None:
            raise InvalidRequestError(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        made = await run_in_threadpool(
            files.commit,
            opened[0],
            owner=ctx.principal.key_id,
            filename=form.filename,
            purpose=purpose,
            expires_after=expires_after,
        )
    finally:
        for written in opened:
            written.discard()  # a no-op once committed
    return made.to_dict()


@router.get("/v1/files")
async def list_files(http: Request, ctx: ContextDep) -> dict[str, Any]:
    """The caller's files, newest first unless ``order=asc``."""
    purpose = http.query_params.get("purpose")
    if purpose is not None and purpose not in (*CREATE_PURPOSES, *OUTPUT_PURPOSES):
        raise InvalidRequestError(
            f"Invalid 'purpose': '{purpose}' is not a file purpose.",
            param="purpose",
            code="invalid_value",
        )
    limit = query_int(http, "limit", default=10_000, low=1, high=10_000)
    page, more = await run_in_threadpool(
        get_batch_service(http).files.page,
        owner=ctx.principal.key_id,
        purpose=purpose,
        after=http.query_params.get("after"),
        limit=limit,
        order=query_order(http),
    )
    return list_page([f.to_dict() for f in page], more)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, http: Request, ctx: ContextDep) -> dict[str, Any]:
    """One of the caller's files."""
    found = await run_in_threadpool(
        get_batch_service(http).files.get, file_id, owner=ctx.principal.key_id
    )
    return found.to_dict()


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, http: Request, ctx: ContextDep) -> StreamingResponse:
    """The bytes of one of the caller's files, streamed."""
    files = get_batch_service(http).files
    found = await run_in_threadpool(files.get, file_id, owner=ctx.principal.key_id)
    chunks = await run_in_threadpool(files.read, file_id, owner=ctx.principal.key_id)
    safe_name = found.filename.replace('"', "")
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "content-length": str(found.bytes),
            "content-disposition": f'attachment; filename="{safe_name}"',
        },
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, http: Request, ctx: ContextDep) -> dict[str, Any]:
    """Delete one of the caller's files."""
    await run_in_threadpool(
        get_batch_service(http).files.delete, file_id, owner=ctx.principal.key_id
    )
    return {"id": file_id, "object": "file", "deleted": True}
