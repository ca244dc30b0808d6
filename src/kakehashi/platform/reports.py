"""Reading the ledger: OpenAI's Usage and Costs APIs, and the ``kakehashi usage`` summary.

:func:`completions_usage` and :func:`costs` answer ``GET /v1/organization/usage/completions``
and ``GET /v1/organization/costs`` with OpenAI's parameters and page shape. Buckets are whole
UTC minutes, hours or days (``1m``, ``1h``, ``1d``): the first starts at ``start_time`` rounded
down to its width, the last ends at ``end_time`` (default now); a page holds ``limit`` buckets
and ``next_page`` continues after them. Every bucket in the range is listed, empty ones with
no results. The completions usage counts every ledger row that is not an embedding.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from kakehashi.errors import InvalidRequestError
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database

BUCKET_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, max) buckets
COSTS_LIMITS = (7, 180)
USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier")
COSTS_GROUPS = ("project_id", "line_item", "api_key_id")
PROJECT_ID = "proj_default"  # kakehashi has one project; grouping by project names it

_u = tables.usage_records


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """The parameters both APIs share (``models``, ``batch`` and ``user_ids`` are completions
    usage only)."""

    start_time: int
    end_time: int | None = None
    bucket_width: str = "1d"
    limit: int | None = None
    page: str | None = None
    group_by: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    batch: bool | None = None


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="invalid_value")


def _encode_page(start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(start.to_bytes(8, "big")).decode()


def _decode_page(page: str) -> int:
    try:
        if not page.startswith("page_"):
            raise ValueError(page)
        raw = base64.urlsafe_b64decode(page[5:].encode())
        if len(raw) != 8:
            raise ValueError(page)
    except (ValueError, binascii.Error):
        raise _invalid("page", f"Invalid page cursor '{page}'.") from None
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class _Window:
    starts: list[int]  # the bucket starts of this page
    width: int
    end: int
    next_start: int | None


def _window(
    query: UsageQuery,
    *,
    widths: Sequence[str],
    limits: tuple[int, int],
    groups: Sequence[str],
    now: float,
) -> _Window:
    if query.bucket_width not in widths:
        raise _invalid(
            "bucket_width",
            f"Invalid value: '{query.bucket_width}'. Supported values are: "
            + ", ".join(f"'{w}'" for w in widths)
            + ".",
        )
    for field in query.group_by:
        if field not in groups:
            raise _invalid(
                "group_by",
                f"Invalid value: '{field}'. Supported values are: "
                + ", ".join(f"'{g}'" for g in groups)
                + ".",
            )
    default, most = limits
    limit = default if query.limit is None else query.limit
    if not 1 <= limit <= most:
        raise _invalid(
            "limit", f"Invalid 'limit': expected a value from 1 to {most}, but got {limit}."
        )
    if query.start_time < 0:
        raise _invalid("start_time", "Invalid 'start_time': must be a Unix time in seconds.")
    width = BUCKET_SECONDS[query.bucket_width]
    end = int(now) if query.end_time is None else query.end_time
    if end <= query.start_time:
        raise _invalid(
            "end_time",
            f"Invalid 'end_time': {end} is not after 'start_time' ({query.start_time}).",
        )
    first = query.start_time - query.start_time % width
    start = first if query.page is None else _decode_page(query.page)
    if start < first or start >= end or (start - first) % width:
        raise _invalid("page", f"The page cursor '{query.page}' does not belong to this query.")
    starts: list[int] = []
    cursor = start
    while cursor < end and len(starts) < limit:
        starts.append(cursor)
        cursor += width
    return _Window(starts, width, end, cursor if cursor < end else None)


def _page(window: _Window, results: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": s,
                "end_time": min(s + window.width, window.end),
                "results": results.get(s, []),
            }
            for s in window.starts
        ],
        "has_more": window.next_start is not None,
        "next_page": _encode_page(window.next_start) if window.next_start is not None else None,
    }


def _filtered(select: sa.Select[Any], window: _Window, query: UsageQuery) -> sa.Select[Any]:
    lo = window.starts[0] * 1000
    hi = min(window.starts[-1] + window.width, window.end) * 1000
    select = select.where(_u.c.started_at_ms >= lo, _u.c.started_at_ms < hi)
    if query.api_key_ids:
        select = select.where(_u.c.key_id.in_(query.api_key_ids))
    if query.project_ids and PROJECT_ID not in query.project_ids:
        select = select.where(sa.false())
    if query.user_ids:
        select = select.where(sa.false())  # no usage belongs to a user
    return select


def _bucket(window: _Window) -> sa.ColumnElement[int]:
    first_ms = window.starts[0] * 1000
    return ((_u.c.started_at_ms - first_ms) // (window.width * 1000)).label("bucket")


def completions_usage(
    db: Database, query: UsageQuery, *, now: float | None = None
) -> dict[str, Any]:
    """``GET /v1/organization/usage/completions``."""
    window = _window(
        query,
        widths=tuple(BUCKET_SECONDS),
        limits=USAGE_LIMITS.get(query.bucket_width, (7, 31)),
        groups=USAGE_GROUPS,
        now=time.time() if now is None else now,
    )
    bucket = _bucket(window)
    is_batch = (_u.c.batch_id.is_not(None)).label("is_batch")
    group_columns: list[Any] = []
    if "api_key_id" in query.group_by:
        group_columns.append(_u.c.key_id)
    if "model" in query.group_by:
        group_columns.append(_u.c.model)
    if "batch" in query.group_by:
        group_columns.append(is_batch)
    select = sa.select(
        bucket,
        *group_columns,
        sa.func.sum(_u.c.prompt_tokens),
        sa.func.sum(_u.c.cached_tokens),
        sa.func.sum(_u.c.completion_tokens),
        sa.func.count(),
    ).where(_u.c.endpoint.not_like("%embedding%"))
    select = _filtered(select, window, query)
    if query.models:
        select = select.where(_u.c.model.in_(query.models))
    if query.batch is not None:
        select = select.where(is_batch if query.batch else sa.not_(is_batch))
    select = select.group_by(bucket, *group_columns).order_by(bucket, *group_columns)
    results: dict[int, list[dict[str, Any]]] = {}
    with db.connection() as conn:
        for row in conn.execute(select):
            index, *groups, prompt, cached, completion, count = row
            named = dict(zip(_group_names(query.group_by), groups, strict=True))
            start = window.starts[0] + int(index) * window.width
            results.setdefault(start, []).append(
                _usage_result(int(prompt), int(cached), int(completion), int(count), named, query)
            )
    return _page(window, results)


def _group_names(group_by: Iterable[str]) -> list[str]:
    return [name for name in ("api_key_id", "model", "batch") if name in group_by]


def _usage_result(
    prompt: int,
    cached: int,
    completion: int,
    count: int,
    groups: dict[str, Any],
    query: UsageQuery,
) -> dict[str, Any]:
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": prompt,
        "input_cached_tokens": cached,
        "input_cache_write_tokens": 0,
        "input_uncached_tokens": prompt - cached,
        "output_tokens": completion,
        "input_text_tokens": prompt - cached,
        "output_text_tokens": completion,
        "input_cached_text_tokens": cached,
        "input_audio_tokens": 0,
        "input_cached_audio_tokens": 0,
        "output_audio_tokens": 0,
        "input_image_tokens": 0,
        "input_cached_image_tokens": 0,
        "output_image_tokens": 0,
        "num_model_requests": count,
        "project_id": PROJECT_ID if "project_id" in query.group_by else None,
        "user_id": None,
        "api_key_id": groups.get("api_key_id"),
        "model": groups.get("model"),
        "batch": bool(groups["batch"]) if "batch" in groups else None,
        "service_tier": "default" if "service_tier" in query.group_by else None,
    }


def costs(db: Database, query: UsageQuery, *, now: float | None = None) -> dict[str, Any]:
    """``GET /v1/organization/costs`` (line items are models)."""
    window = _window(
        query,
        widths=("1d",),
        limits=COSTS_LIMITS,
        groups=COSTS_GROUPS,
        now=time.time() if now is None else now,
    )
    bucket = _bucket(window)
    group_columns: list[Any] = []
    if "api_key_id" in query.group_by:
        group_columns.append(_u.c.key_id)
    if "line_item" in query.group_by:
        group_columns.append(_u.c.model)
    select = _filtered(sa.select(bucket, *group_columns, sa.func.sum(_u.c.cost_usd)), window, query)
    select = select.group_by(bucket, *group_columns).order_by(bucket, *group_columns)
    results: dict[int, list[dict[str, Any]]] = {}
    with db.connection() as conn:
        for row in conn.execute(select):
            index, *groups, value = row
            named = dict(
                zip(
                    [n for n in ("api_key_id", "line_item") if n in query.group_by],
                    groups,
                    strict=True,
                )
            )
            start = window.starts[0] + int(index) * window.width
            results.setdefault(start, []).append(
                {
                    "object": "organization.costs.result",
                    "amount": {"value": float(value or 0.0), "currency": "usd"},
                    "line_item": named.get("line_item"),
                    "project_id": PROJECT_ID if "project_id" in query.group_by else None,
                    "api_key_id": named.get("api_key_id"),
                    "quantity": None,
                    "quantity_unit": None,
                }
            )
    return _page(window, results)


SummaryBy = Literal["key", "model", "day"]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of ``kakehashi usage``."""

    group: str
    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float


def summary(db: Database, *, by: SummaryBy, since: float) -> list[SummaryRow]:
    """Ledger totals since ``since`` (Unix seconds), by key (named), model or UTC day."""
    keys = tables.api_keys
    column: sa.ColumnElement[Any]
    if by == "key":
        column = _u.c.key_id
    elif by == "model":
        column = _u.c.model
    else:
        column = (_u.c.started_at_ms // 86_400_000).label("day")
    select = (
        sa.select(
            column,
            sa.func.count(),
            sa.func.sum(sa.case((_u.c.status != "success", 1), else_=0)),
            sa.func.sum(_u.c.prompt_tokens),
            sa.func.sum(_u.c.cached_tokens),
            sa.func.sum(_u.c.completion_tokens),
            sa.func.sum(_u.c.cost_usd),
        )
        .where(_u.c.started_at_ms >= int(since * 1000))
        .group_by(column)
        .order_by(column)
    )
    with db.connection() as conn:
        names = dict(conn.execute(sa.select(keys.c.id, keys.c.name)).all()) if by == "key" else {}
        rows = conn.execute(select).all()
    out = []
    for group, count, errors, prompt, cached, completion, cost in rows:
        if by == "day":
            label = time.strftime("%Y-%m-%d", time.gmtime(int(group) * 86400))
        elif by == "key" and group in names:
            label = f"{names[group]} ({group})"
        else:
            label = str(group)
        out.append(
            SummaryRow(
                label,
                int(count),
                int(errors or 0),
                int(prompt or 0),
                int(cached or 0),
                int(completion or 0),
                float(cost or 0.0),
            )
        )
    return out
