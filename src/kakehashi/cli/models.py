"""``kakehashi models``: the catalog as a table."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kakehashi.cli.common import ConfigOption, NowOption, build_or_exit, load_settings


def models_command(
    key: Annotated[
        str | None,
        typer.Option(help="Show access for this API key (default: every model is accessible)."),
    ] = None,
    config: ConfigOption = None,
    now: NowOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Print the model catalog: each model's status and whether the caller may use it."""
    from rich.console import Console
    from rich.table import Table

    from kakehashi.api.app import build_service, default_backends
    from kakehashi.gateway.access import principal_for
    from kakehashi.gateway.context import OPEN_ACCESS
    from kakehashi.gateway.report import catalog_rows

    console = Console(width=max(Console().width, 160))
    settings = load_settings({"now": now}, config)
    caller = OPEN_ACCESS
    if key is not None:
        found = [spec for spec in settings.all_keys() if spec.key == key]
        if not found:
            console.print("[red]error:[/] --key is not one of the configured keys")
            raise typer.Exit(1)
        caller = principal_for(found[0])
    service = build_or_exit(console, lambda: build_service(settings, default_backends(settings)))
    today = service.clock()
    rows = catalog_rows(service.catalog, caller=caller, today=today)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"kakehashi models on {today.isoformat()} (key: {caller.label})")
    for column in ("id", "serves", "endpoints", "status", "access", "price in/out per 1M"):
        table.add_column(column)
    for row in rows:
        prices = "/".join(
            "-" if p is None else f"${p:g}" for p in (row["input_price"], row["output_price"])
        )
        status = row["status"]
        style = "red" if row["retired"] else "yellow" if status.startswith("deprecated") else ""
        table.add_row(
            row["id"],
            row["serves"] or "",
            ", ".join(row["capabilities"]),
            f"[{style}]{status}[/]" if style else status,
            row["access"],
            prices,
        )
    console.print(table)
