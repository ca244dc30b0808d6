"""What the command groups share: settings from flags, env and file; common options; errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from kakehashi.settings import Settings

T = TypeVar("T")


def load_settings(overrides: dict[str, Any], config: Path | None = None) -> Settings:
    """Settings from the config file and ``KAKEHASHI_*`` env, with the given flags on top."""
    # Imported here: pydantic-settings is slow to import, and the client commands never need it.
    import tomllib

    from pydantic import ValidationError

    from kakehashi.settings import Settings

    given = {key: value for key, value in overrides.items() if value not in (None, [], ())}
    try:
        return Settings.load(config, **given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(problems) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"cannot read the config file: {exc}") from None


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings TOML file (also KAKEHASHI_CONFIG): keys, tiers, catalog entries.",
    ),
]
NowOption = Annotated[
    str | None,
    typer.Option(help="Pretend today is this date (YYYY-MM-DD) for model lifecycles."),
]


def log_to_stderr(level: str) -> None:
    """Show kakehashi's own log records (uvicorn configures only its loggers)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("kakehashi")
    logger.addHandler(handler)
    # uvicorn's "trace" is below DEBUG; logging has no such level.
    logger.setLevel(getattr(logging, level.upper(), logging.DEBUG))


def build_or_exit(console: Console, factory: Callable[[], T]) -> T:
    """``factory()``, turning catalog configuration errors into a message and exit code 1."""
    from kakehashi.backends.embedding import EmbeddingModelNotFoundError
    from kakehashi.errors import ConflictError
    from kakehashi.gateway.catalog import CatalogError

    try:
        return factory()
    except (CatalogError, EmbeddingModelNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
    except ConflictError as exc:
        console.print(f"[red]error:[/] {exc.message}")
    raise typer.Exit(1)
