"""``/admin/api_keys``: create, list, read and revoke API keys, set their per-model rate limits
and model permissions. Shaped after OpenAI's project API keys, rate limits and model
permissions; guarded by the admin key.

Creating a key answers with the key object and, once, its ``value``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from kakehashi.api.deps import parse_body
from kakehashi.api.platform_access import get_platform, require_admin_key
from kakehashi.errors import InvalidRequestError, NotFoundError
from kakehashi.platform.keys import ApiKey, ModelLimit, NewKey

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


class CreateKey(BaseModel):
    """``POST /admin/api_keys``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tier: str | None = None
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    expires_at: int | None = Field(default=None, description="Unix seconds")
    store_bodies: bool = False


class SetRateLimit(BaseModel):
    """``POST /admin/api_keys/{key_id}/rate_limits``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_requests_per_1_minute: int | None = Field(default=None, ge=1)
    max_tokens_per_1_minute: int | None = Field(default=None, ge=1)


class SetModelPermissions(BaseModel):
    """``POST /admin/api_keys/{key_id}/model_permissions``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["allow_list", "deny_list"]
    model_ids: list[str]


def key_object(key: ApiKey, now: float | None = None) -> dict[str, Any]:
    """A key as the admin API shows it (never the key itself)."""
    status = key.status(time.time() if now is None else now)
    return {
        "object": "organization.project.api_key",
        "id": key.id,
        "name": key.name,
        "redacted_value": key.redacted_value,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "status": status,
        "owner_project_access": "active" if status == "active" else "inactive",
        "tier": key.tier,
        "models": list(key.allowed_models) if key.allowed_models else None,
        "denied_models": list(key.denied_models),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget_usd": key.budget_usd,
        "spent_usd": key.spent_usd,
        "store_bodies": key.store_bodies,
    }


def _rate_limit_object(model: str, limit: ModelLimit) -> dict[str, Any]:
    return {
        "object": "project.rate_limit",
        "id": f"rl_{model}",
        "model": model,
        "max_requests_per_1_minute": limit.rpm,
        "max_tokens_per_1_minute": limit.tpm,
    }


def _page_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer from 1 to 100, but got '{raw}'.",
            param="limit",
            code="invalid_value",
        )
    return int(raw)


@router.get("/api_keys")
async def list_keys(request: Request) -> dict[str, Any]:
    """Keys, oldest first, ``limit`` per page, continuing ``after`` a key id."""
    limit = _page_limit(request)
    after = request.query_params.get("after")
    repo = await run_in_threadpool(get_platform(request).keys)
    try:
        keys = await run_in_threadpool(lambda: repo.list(after=after, limit=limit + 1))
    except NotFoundError:
        raise InvalidRequestError(
            f"Invalid 'after': no API key with id '{after}'.", param="after", code="invalid_value"
        ) from None
    page = keys[:limit]
    return {
        "object": "list",
        "data": [key_object(k) for k in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(keys) > limit,
    }


@router.post("/api_keys")
async def create_key(request: Request) -> dict[str, Any]:
    """Create a key; the answer carries its ``value`` this once."""
    body = await parse_body(request, CreateKey)
    new = NewKey(
        name=body.name,
        tier=body.tier,
        models=tuple(body.models) if body.models is not None else None,
        rpm=body.rpm,
        tpm=body.tpm,
        budget_usd=body.budget_usd,
        expires_at=body.expires_at,
        store_bodies=body.store_bodies,
    )
    access = get_platform(request)
    repo = await run_in_threadpool(access.keys)
    key, secret = await run_in_threadpool(lambda: repo.create(new, tiers=access.settings.tiers))
    return {**key_object(key), "value": secret}


@router.get("/api_keys/{key_id}")
async def get_key(request: Request, key_id: str) -> dict[str, Any]:
    """One key."""
    repo = await run_in_threadpool(get_platform(request).keys)
    return key_object(await run_in_threadpool(repo.get, key_id))


@router.delete("/api_keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    """Revoke a key (it stays listed, as revoked, and its usage stays in the ledger)."""
    access = get_platform(request)
    repo = await run_in_threadpool(access.keys)
    key = await run_in_threadpool(repo.revoke, key_id)
    access.on_key_changed(key.id)
    return {"object": "organization.project.api_key.deleted", "id": key.id, "deleted": True}


@router.get("/api_keys/{key_id}/rate_limits")
async def list_rate_limits(request: Request, key_id: str) -> dict[str, Any]:
    """The key's per-model limits."""
    repo = await run_in_threadpool(get_platform(request).keys)
    key = await run_in_threadpool(repo.get, key_id)
    data = [_rate_limit_object(m, lim) for m, lim in sorted(key.model_limits.items())]
    return {"object": "list", "data": data, "has_more": False}


@router.post("/api_keys/{key_id}/rate_limits")
async def set_rate_limit(request: Request, key_id: str) -> dict[str, Any]:
    """Set the key's requests/min and tokens/min on one model."""
    body = await parse_body(request, SetRateLimit)
    if body.max_requests_per_1_minute is None and body.max_tokens_per_1_minute is None:
        raise InvalidRequestError(
            "Give max_requests_per_1_minute, max_tokens_per_1_minute or both.",
            param="max_requests_per_1_minute",
            code="missing_required_parameter",
        )
    limit = ModelLimit(rpm=body.max_requests_per_1_minute, tpm=body.max_tokens_per_1_minute)
    access = get_platform(request)
    repo = await run_in_threadpool(access.keys)
    await run_in_threadpool(repo.set_model_limit, key_id, body.model, limit)
    access.on_key_changed(key_id)
    return _rate_limit_object(body.model, limit)


@router.delete("/api_keys/{key_id}/rate_limits/{rate_limit_id}")
async def delete_rate_limit(request: Request, key_id: str, rate_limit_id: str) -> dict[str, Any]:
    """Remove the key's limits on one model (``rl_<model>``)."""
    access = get_platform(request)
    repo = await run_in_threadpool(access.keys)
    key = await run_in_threadpool(repo.get, key_id)
    model = rate_limit_id.removeprefix("rl_")
    if model not in key.model_limits:
        raise NotFoundError(
            f"No rate limit '{rate_limit_id}' on API key '{key_id}'.", param="rate_limit_id"
        )
    await run_in_threadpool(repo.set_model_limit, key_id, model, None)
    access.on_key_changed(key_id)
    return {"object": "project.rate_limit.deleted", "id": rate_limit_id, "deleted": True}


@router.get("/api_keys/{key_id}/model_permissions")
async def get_model_permissions(request: Request, key_id: str) -> dict[str, Any]:
    """The key's allow-list and deny-list."""
    repo = await run_in_threadpool(get_platform(request).keys)
    key = await run_in_threadpool(repo.get, key_id)
    return {
        "object": "list",
        "data": [
            {"mode": "allow_list", "model_ids": list(key.allowed_models or ())},
            {"mode": "deny_list", "model_ids": list(key.denied_models)},
        ],
    }


@router.post("/api_keys/{key_id}/model_permissions")
async def set_model_permissions(request: Request, key_id: str) -> dict[str, Any]:
    """Replace the key's allow-list or deny-list (an empty allow-list allows every model)."""
    body = await parse_body(request, SetModelPermissions)
    access = get_platform(request)
    repo = await run_in_threadpool(access.keys)
    await run_in_threadpool(repo.set_model_permissions, key_id, body.mode, body.model_ids)
    access.on_key_changed(key_id)
    return {"object": "project.model_permissions", "mode": body.mode, "model_ids": body.model_ids}
