"""Model lifecycle by the calendar: active, deprecated (served, with headers), retired (404).

Dates are UTC calendar days. A model is deprecated from ``deprecated_on`` (inclusive) and
retired from ``shutdown_on`` (inclusive), as OpenAI shut its models down *on* the announced day.
The clock is injectable: :func:`system_clock` in production, :func:`fixed_clock` in tests and
for ``KAKEHASHI_NOW``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from email.utils import format_datetime

Clock = Callable[[], date]
"""Today's date (UTC)."""


def system_clock() -> date:
    """Today in UTC."""
    return datetime.now(UTC).date()


def fixed_clock(day: date) -> Clock:
    """A clock that always says ``day``."""
    return lambda: day


class Status(enum.Enum):
    """Where a model is in its life on a given day."""

    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When a model is deprecated and shut down, and what replaces it."""

    deprecated_on: date | None = None
    shutdown_on: date | None = None
    replacement: str | None = None

    def status(self, today: date) -> Status:
        """The model's status on ``today``."""
        if self.shutdown_on is not None and today >= self.shutdown_on:
            return Status.RETIRED
        if self.deprecated_on is not None and today >= self.deprecated_on:
            return Status.DEPRECATED
        return Status.ACTIVE

    def headers(self, today: date) -> dict[str, str]:
        """Response headers while deprecated: ``Deprecation`` (RFC 9745, ``@<unix time>``),
        ``Sunset`` (RFC 8594, an HTTP-date) and a ``Link`` to the replacement."""
        if self.status(today) is not Status.DEPRECATED or self.deprecated_on is None:
            return {}
        headers = {"Deprecation": f"@{int(_midnight(self.deprecated_on).timestamp())}"}
        if self.shutdown_on is not None:
            headers["Sunset"] = format_datetime(_midnight(self.shutdown_on), usegmt=True)
        if self.replacement:
            # A model's successor is a model; an endpoint's successor is a path.
            target = self.replacement
            url = target if target.startswith("/") else f"/v1/models/{target}"
            headers["Link"] = f'<{url}>; rel="successor-version"'
        return headers

    def retired_message(self, model: str) -> str:
        """The 404 message for ``model`` once it is retired (naming the replacement)."""
        when = f"on {self.shutdown_on.isoformat()}" if self.shutdown_on else ""
        message = f"The model `{model}` has been deprecated and was shut down {when}".rstrip()
        if self.replacement:
            return f"{message}; use `{self.replacement}` instead."
        return message + "."

    def describe(self, today: date) -> str:
        """``active``, ``deprecated until D → R`` or ``retired → R`` (for people)."""
        status = self.status(today)
        arrow = f" → {self.replacement}" if self.replacement else ""
        if status is Status.RETIRED:
            return f"retired{arrow}"
        if status is Status.DEPRECATED:
            until = f" until {self.shutdown_on.isoformat()}" if self.shutdown_on else ""
            return f"deprecated{until}{arrow}"
        return "active"


ENDPOINT_DEPRECATIONS = {
    "edits": Lifecycle(deprecated_on=date(2023, 7, 6), replacement="/v1/chat/completions")
}
"""Endpoints OpenAI deprecated; kakehashi keeps serving them, with a ``Deprecation`` header."""
