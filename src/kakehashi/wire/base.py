"""Base classes shared by every wire shape.

Requests are strict about the fields they know (a string is not a number) and keep the many
fields OpenAI accepts that kakehashi does not model, so that a request forwarded to an upstream
arrives intact. Responses omit optional fields that were left at ``None``, the way OpenAI does,
but always carry the fields its schema requires; they too keep fields they do not model (an
upstream's ``tool_calls`` or ``service_tier``), which pass through unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


class _KeepNull:
    """Marker for a field that is serialized as ``null`` rather than omitted."""

    def __repr__(self) -> str:
        return "KEEP_NULL"


KEEP_NULL = _KeepNull()
"""Put in ``Annotated[T | None, KEEP_NULL]`` for fields the spec requires even when null."""


class RequestModel(BaseModel):
    """A request body (or part of one): strict types, unknown fields kept as they came
    (a gateway forwards parameters it does not know to upstreams that may).

    ``null`` means unset: an optional field sent as ``null`` takes its default, as OpenAI (and
    the openai 0.28 SDK, which sends ``"stop": null``) expect. A required field keeps its
    ``null``, for its own validator to default or refuse.
    """

    model_config = ConfigDict(strict=True, extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: value
            for key, value in data.items()
            if value is not None or (key in fields and fields[key].is_required())
        }


class WireModel(BaseModel):
    """A response body (or part of one).

    A field whose value is ``None`` is left out of the output unless it was set explicitly or
    is marked :data:`KEEP_NULL`. Fields the model does not declare are kept (and serialized)
    as they came.
    """

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _omit_default_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        fields_set = self.model_fields_set
        for name in _omissible(type(self)):
            if name not in fields_set and data.get(name, 0) is None:
                del data[name]
        return data


@functools.cache
def _omissible(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` left out when ``None`` and not set: all but the KEEP_NULL ones
    (worked out once per class: serializing a stream's chunks asks for it three times each)."""
    return tuple(
        name for name, field in model.model_fields.items() if KEEP_NULL not in field.metadata
    )


def forwarded(request: RequestModel) -> dict[str, Any]:
    """``request`` as JSON to send on: every field the client set (known or not), without
    nulls."""
    data: dict[str, Any] = request.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return data
