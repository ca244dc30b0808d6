"""Query parameters and the body of OpenAI's cursor-paged lists (``after``, ``limit``,
``order``; ``first_id``, ``last_id``, ``has_more``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Request

from kakehashi.errors import InvalidRequestError


def query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``, or a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid type for '{name}': expected an integer, but got '{raw}' instead.",
            param=name,
            code="invalid_type",
        ) from None
    if not low <= value <= high:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer between {low} and {high}, but got {value}.",
            param=name,
            code="invalid_value",
        )
    return value


def query_order(request: Request) -> Literal["asc", "desc"]:
    """``order``: ``asc`` or ``desc`` (the default)."""
    raw = request.query_params.get("order", "desc")
    if raw == "asc":
        return "asc"
    if raw == "desc":
        return "desc"
    raise InvalidRequestError(
        f"Invalid 'order': expected 'asc' or 'desc', but got '{raw}'.",
        param="order",
        code="invalid_value",
    )


def list_page(items: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page of objects as OpenAI lists them."""
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
