"""The batch object, its lifecycle, and the lines of its output and error files.

::

    validating ──► in_progress ──► finalizing ──► completed
        │               │  └──────────────────────► expired     (the 24 h window passed)
        └──► failed     └──► cancelling ──► cancelled            (also from validating)

A batch is worked by one runner at a time (the lease); the API only creates batches and asks
for a cancel, which the working runner notices within a second.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kakehashi.gateway.context import Principal


class BatchStatus(enum.StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the batch is over."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset(BatchStatus) - FINAL_STATUSES
"""Statuses a runner still has work in."""

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
"""The endpoints a kakehashi batch may run."""
COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_LINES = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


@dataclass(frozen=True, slots=True)
class BatchError:
    """One entry of ``errors.data``: what is wrong, and on which input line (1-based)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch as stored; :meth:`to_dict` is OpenAI's ``Batch`` object."""

    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[BatchError, ...] = ()
    metadata: Mapping[str, str] | None = None
    output_expires_after: int | None = None
    model: str | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's ``Batch`` object (optional fields without a value left out)."""
        counts = self.request_counts
        body = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": (
                {"object": "list", "data": [e.to_dict() for e in self.errors]}
                if self.errors
                else None
            ),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.value,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": counts.total,
                "completed": counts.completed,
                "failed": counts.failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }
        return {key: value for key, value in body.items() if value is not None}


# -- the owner, kept with the batch so it runs with the identity that created it ------------


def principal_to_json(principal: Principal) -> dict[str, Any]:
    """What a batch keeps of its owner's identity."""
    return {
        "key_id": principal.key_id,
        "label": principal.label,
        "tier": principal.tier,
        "allowed_models": (
            sorted(principal.allowed_models) if principal.allowed_models is not None else None
        ),
        "denied_models": sorted(principal.denied_models),
        "store_bodies": principal.store_bodies,
    }


def principal_from_json(data: Mapping[str, Any]) -> Principal:
    """The owner a batch was created by."""
    allowed = data.get("allowed_models")
    return Principal(
        key_id=data["key_id"],
        label=data.get("label") or data["key_id"],
        tier=data.get("tier"),
        allowed_models=frozenset(allowed) if allowed is not None else None,
        denied_models=frozenset(data.get("denied_models") or ()),
        store_bodies=bool(data.get("store_bodies")),
    )


# -- output lines ------------------------------------------------------------------------------


def line_ids(batch_id: str, custom_id: str) -> tuple[str, str]:
    """The output line's ``id`` and its request id: the same on every run of the line, so a
    line run again after a crash is the same request to the ledger."""
    digest = hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:32]
    return f"batch_req_{digest}", f"req_{digest}"


def response_line(
    batch_id: str, custom_id: str, status_code: int, body: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``BatchRequestOutput`` line for a request that ran (whatever its status)."""
    line_id, request_id = line_ids(batch_id, custom_id)
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": dict(body)},
        "error": None,
    }


def error_line(batch_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A ``BatchRequestOutput`` line for a request that never ran (expired, cancelled)."""
    line_id, _ = line_ids(batch_id, custom_id)
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
