"""The Models API: ``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Literal

from kakehashi.wire.base import WireModel


class ModelCard(WireModel):
    """One model the server offers; ``shutdown_date`` (``YYYY-MM-DD``) once one is announced.

    ``context_window`` and ``max_model_len`` (the name vLLM uses) are kakehashi's additions:
    the model's context window in tokens, where known, so clients can fit a conversation.
    """

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None
    context_window: int | None = None
    max_model_len: int | None = None


class ModelList(WireModel):
    """The body of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
