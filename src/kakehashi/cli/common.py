"""What the command groups share: settings from flags, env and file; common options; errors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

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
    """``factory()``, turning catalog, upstream and database configuration errors into a
    message and exit code 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from kakehashi.backends.embedding import EmbeddingModelNotFoundError
    from kakehashi.backends.upstream import UpstreamConfigError
    from kakehashi.errors import ConflictError
    from kakehashi.gateway.catalog import CatalogError
    from kakehashi.platform.storage.db import DatabaseConfigError

    try:
        return factory()
    except (
        CatalogError,
        EmbeddingModelNotFoundError,
        UpstreamConfigError,
        DatabaseConfigError,
    ) as exc:
        console.print(f"[red]error:[/] {exc}")
    except SQLAlchemyError as exc:  # the database is down or refuses us
        cause = getattr(exc, "orig", None) or exc
        console.print(f"[red]error:[/] cannot open the platform database: {cause}")
    except ConflictError as exc:
        console.print(f"[red]error:[/] {exc.message}")
    raise typer.Exit(1)


def exit_with(console: Console, message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line (never wrapped) and exit with ``code``."""
    console.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


class _DownloadBar:
    """A progress bar drawn from a download's first report on, as ``ollama pull`` draws one."""

    def __init__(self, console: Console, label: str) -> None:
        self._console = console
        self._label = label
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, received: int, total: int | None) -> None:
        from rich import progress

        if self._bar is None:
            self._bar = progress.Progress(
                progress.TextColumn("pulling [bold]{task.description}[/]"),
                progress.BarColumn(),
                progress.DownloadColumn(),
                progress.TransferSpeedColumn(),
                progress.TimeRemainingColumn(),
                console=self._console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=total)
        self._bar.update(self._task, completed=received, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextlib.contextmanager
def download_progress(console: Console, label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A callback for download progress reports that draws a bar labelled ``label`` (only if
    a download happens); the bar is closed when the block ends."""
    bar = _DownloadBar(console, label)
    try:
        yield bar
    finally:
        bar.close()
