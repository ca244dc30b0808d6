"""``kakehashi usage``: what the ledger says was used and what it cost."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from kakehashi.cli.common import ConfigOption
from kakehashi.cli.platform_common import parse_moment, platform_database


def usage_command(
    by: Annotated[
        Literal["key", "model", "day"], typer.Option(help="Group by key, model or UTC day.")
    ] = "model",
    since: Annotated[
        str, typer.Option(help="From when: YYYY-MM-DD (UTC), a date-time, or a span like 7d, 24h.")
    ] = "30d",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Print requests, tokens and cost from the usage ledger."""
    from kakehashi.platform.reports import summary

    start = parse_moment(since, param="--since")
    with platform_database(config, Console(stderr=True)) as (_, db):
        rows = summary(db, by=by, since=start.timestamp())
    if as_json:
        for row in rows:
            typer.echo(json.dumps(asdict(row)))
        return
    table = Table(title=f"kakehashi usage by {by} since {start:%Y-%m-%d %H:%M} UTC")
    for column in (
        by,
        "requests",
        "errors",
        "prompt tokens",
        "cached",
        "completion tokens",
        "cost",
    ):
        table.add_column(column, justify="left" if column == by else "right")
    for row in rows:
        table.add_row(
            row.group,
            f"{row.requests:,}",
            f"{row.errors:,}",
            f"{row.prompt_tokens:,}",
            f"{row.cached_tokens:,}",
            f"{row.completion_tokens:,}",
            f"${row.cost_usd:,.4f}",
        )
    if not rows:
        table.caption = "no usage recorded in this period"
    Console(width=max(Console().width, 120)).print(table)
