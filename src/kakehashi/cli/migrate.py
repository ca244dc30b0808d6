"""``kakehashi migrate PATH...``: code for openai<1.0 and retired models, rewritten."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_MISSING_LIBCST = (
    "kakehashi migrate needs libcst, which is not installed: pip install 'kakehashi[migrate]'."
)


def migrate_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            exists=True, metavar="PATH...", help="Python files or directories to migrate."
        ),
    ],
    write: Annotated[
        bool,
        typer.Option("--write/--diff", help="Rewrite the files (default: print a unified diff)."),
    ] = False,
) -> None:
    """Rewrite code written for openai<1.0 (and retired models) for the current SDK."""
    from rich.console import Console
    from rich.markup import escape

    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        from kakehashi.client.migrate import migrate_paths
    except ImportError:
        errors.print(f"[red]error:[/] {escape(_MISSING_LIBCST)}")
        raise typer.Exit(1) from None

    seen = changed = failed = 0
    for result in migrate_paths(paths):
        seen += 1
        if result.error is not None:
            failed += 1
            errors.print(f"[red]error:[/] {escape(f'{result.path}: {result.error}')}")
            continue
        for note in result.notes:
            errors.print(f"[yellow]note:[/] {escape(f'{result.path}: {note}')}")
        if not result.changed:
            continue
        changed += 1
        if write:
            result.path.write_text(result.after, "utf-8")
            errors.print(f"rewrote {escape(str(result.path))}")
        else:
            typer.echo(result.diff(), nl=False)
    verb = "rewrote" if write else "would rewrite"
    errors.print(
        f"{verb} {changed} of {seen} Python files" + (f"; {failed} failed" if failed else "")
    )
    if failed:
        raise typer.Exit(1)
