"""The deprecated Edits API: ``POST /v1/edits`` request and response (OpenAI's 2023 shape)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kakehashi.wire.base import RequestModel, WireModel
from kakehashi.wire.common import Temperature, TopP, Usage

MAX_EDIT_CHOICES = 20


class EditRequest(RequestModel):
    """``{model, input, instruction, n, temperature, top_p}``; ``input`` defaults to ``""``."""

    model: str
    instruction: str
    input: str | None = None
    n: Annotated[int | None, Field(ge=1, le=MAX_EDIT_CHOICES)] = None
    temperature: Temperature = None
    top_p: TopP = None


class EditChoice(WireModel):
    """One edited text."""

    text: str
    index: int
    finish_reason: Literal["stop", "length"]


class EditResponse(WireModel):
    """The body of ``POST /v1/edits``."""

    object: Literal["edit"] = "edit"
    created: int
    choices: list[EditChoice]
    usage: Usage
