"""``GET /v1/organization/usage/completions`` and ``GET /v1/organization/costs``: the usage
ledger in OpenAI's shape, for the admin key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from kakehashi.api.platform_access import get_platform, require_admin_key
from kakehashi.errors import InvalidRequestError
from kakehashi.platform.reports import UsageQuery, completions_usage, costs

router = APIRouter(tags=["usage"], dependencies=[Depends(require_admin_key)])

_LISTS = ("group_by", "api_key_ids", "project_ids", "models", "user_ids")


def _int(request: Request, name: str, *, required: bool = False) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise InvalidRequestError(
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid type for '{name}': expected an integer, but got '{raw}' instead.",
            param=name,
            code="invalid_type",
        ) from None


def _list(request: Request, name: str) -> tuple[str, ...]:
    # SDKs send name[]=a&name[]=b; people also write name=a,b or repeat name=.
    values = request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def _query(request: Request) -> UsageQuery:
    batch_raw = request.query_params.get("batch")
    batch = None
    if batch_raw is not None:
        if batch_raw.lower() not in ("true", "false"):
            raise InvalidRequestError(
                f"Invalid type for 'batch': expected a boolean, but got '{batch_raw}' instead.",
                param="batch",
                code="invalid_type",
            )
        batch = batch_raw.lower() == "true"
    start = _int(request, "start_time", required=True)
    assert start is not None
    lists: dict[str, Any] = {name: _list(request, name) for name in _LISTS}
    return UsageQuery(
        start_time=start,
        end_time=_int(request, "end_time"),
        bucket_width=request.query_params.get("bucket_width", "1d"),
        limit=_int(request, "limit"),
        page=request.query_params.get("page"),
        batch=batch,
        **lists,
    )


@router.get("/v1/organization/usage/completions")
async def usage_completions(request: Request) -> dict[str, Any]:
    """Completions usage in time buckets."""
    query = _query(request)
    db = await run_in_threadpool(get_platform(request).database)
    return await run_in_threadpool(completions_usage, db, query)


@router.get("/v1/organization/costs")
async def organization_costs(request: Request) -> dict[str, Any]:
    """Costs in daily buckets."""
    query = _query(request)
    db = await run_in_threadpool(get_platform(request).database)
    return await run_in_threadpool(costs, db, query)
