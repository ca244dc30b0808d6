"""``kakehashi keys create|list|revoke``: API keys in the platform database.

``create`` prints the new key once, alone on stdout (so ``KEY=$(kakehashi keys create ...)``
works); only its hash is stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kakehashi.cli.common import ConfigOption
from kakehashi.cli.platform_common import fail, parse_moment, platform_database

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


@app.command("create")
def create_command(
    name: Annotated[str, typer.Option(help="What the key is for (shown in lists and usage).")],
    tier: Annotated[
        str | None, typer.Option(help="Access tier (one of the configured tiers).")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model ids the key may use (default: all).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget_usd: Annotated[
        float | None, typer.Option(help="Spend after which requests get 429.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            help="When the key stops working: YYYY-MM-DD (UTC), a date-time, or a span like 30d."
        ),
    ] = None,
    store_bodies: Annotated[
        bool, typer.Option(help="Keep this key's request and response bodies (retention).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once."""
    from kakehashi.errors import InvalidRequestError
    from kakehashi.platform.keys import KeyRepository, NewKey

    err = Console(stderr=True)
    model_list = None
    if models is not None:
        model_list = tuple(m.strip() for m in models.split(","))
    expires_at = None
    if expires is not None:
        expires_at = int(parse_moment(expires, param="--expires", ahead=True).timestamp())
    new = NewKey(
        name=name,
        tier=tier,
        models=model_list,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        expires_at=expires_at,
        store_bodies=store_bodies,
    )
    with platform_database(config, err) as (settings, db):
        try:
            record, secret = KeyRepository(db).create(new, tiers=settings.tiers)
        except InvalidRequestError as exc:
            raise typer.BadParameter(
                exc.message, param_hint=f"--{(exc.param or '').replace('_', '-')}"
            ) from None
    typer.echo(secret)
    err.print(
        f"created [bold]{record.id}[/] ({record.name}). Store the key now: it is not shown again.",
        highlight=False,
        soft_wrap=True,
    )


@app.command("list")
def list_command(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List keys (never the keys themselves)."""
    import time

    from kakehashi.platform.keys import KeyRepository

    console = Console(width=max(Console().width, 160))
    with platform_database(config, Console(stderr=True)) as (_, db):
        keys = KeyRepository(db).list()
    now = time.time()
    if as_json:
        for key in keys:
            typer.echo(
                json.dumps(
                    {
                        "id": key.id,
                        "name": key.name,
                        "redacted_value": key.redacted_value,
                        "status": key.status(now),
                        "tier": key.tier,
                        "models": list(key.allowed_models) if key.allowed_models else None,
                        "rpm": key.rpm,
                        "tpm": key.tpm,
                        "budget_usd": key.budget_usd,
                        "spent_usd": key.spent_usd,
                        "created_at": key.created_at,
                        "expires_at": key.expires_at,
                        "last_used_at": key.last_used_at,
                    }
                )
            )
        return
    table = Table(title=f"kakehashi keys ({len(keys)})")
    table.add_column("id", no_wrap=True)
    for column in ("name", "key", "status", "tier", "models", "rpm/tpm", "spent/budget",
                   "created", "expires", "last used"):  # fmt: skip
        table.add_column(column)
    for key in keys:
        status = key.status(now)
        table.add_row(
            key.id,
            key.name,
            key.redacted_value,
            status if status == "active" else f"[red]{status}[/]",
            key.tier or "-",
            ", ".join(key.allowed_models) if key.allowed_models else "all",
            f"{key.rpm or '-'}/{key.tpm or '-'}",
            f"${key.spent_usd:.4f}/"
            + (f"${key.budget_usd:g}" if key.budget_usd is not None else "-"),
            _when(key.created_at),
            _when(key.expires_at),
            _when(key.last_used_at),
        )
    console.print(table)


@app.command("revoke")
def revoke_command(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), as `keys list` shows.")],
    config: ConfigOption = None,
) -> None:
    """End a key now. Running servers stop accepting it within the key cache time (5 s)."""
    from kakehashi.errors import NotFoundError
    from kakehashi.platform.keys import KeyRepository

    err = Console(stderr=True)
    with platform_database(config, err) as (_, db):
        try:
            record = KeyRepository(db).revoke(key_id)
        except NotFoundError:
            raise fail(err, f"no key with id {key_id!r} (see `kakehashi keys list`)") from None
    err.print(f"revoked {record.id} ({record.name})", highlight=False, soft_wrap=True)
