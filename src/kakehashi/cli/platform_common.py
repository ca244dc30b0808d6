"""What ``keys`` and ``usage`` share: the platform database from the settings, and clean
errors when it cannot be used."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kakehashi.cli.common import load_settings

if TYPE_CHECKING:
    from rich.console import Console

    from kakehashi.platform.storage.db import Database
    from kakehashi.settings import Settings


def fail(console: Console, message: str) -> typer.Exit:
    """Print ``message`` as an error; the exit to raise."""
    console.print(f"[red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextlib.contextmanager
def platform_database(config: Path | None, console: Console) -> Iterator[tuple[Settings, Database]]:
    """The settings and the migrated platform database, closed afterwards."""
    from sqlalchemy.exc import SQLAlchemyError

    from kakehashi.platform.storage.db import Database, DatabaseConfigError

    settings = load_settings({}, config)
    try:
        db = Database.open(settings.database_url, settings.data_dir)
    except DatabaseConfigError as exc:
        raise fail(console, str(exc)) from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise fail(console, f"cannot use the database: {exc.__class__.__name__}: {cause}") from None
    try:
        yield settings, db
    except SQLAlchemyError as exc:
        raise fail(console, f"database error: {getattr(exc, 'orig', None) or exc}") from None
    finally:
        db.close()


def parse_moment(
    text: str, *, param: str, ahead: bool = False, now: datetime | None = None
) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC), an ISO date-time, or a span such as ``7d``, ``24h`` or
    ``30m`` back from now (with ``ahead``, from now on)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[-1:] in units and value[:-1].isdigit():
        span = timedelta(**{units[value[-1]]: int(value[:-1])})
        return now + span if ahead else now - span
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date (YYYY-MM-DD), a date-time, or a span such as 7d or 24h",
            param_hint=param,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
