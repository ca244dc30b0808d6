"""``kakehashi batch submit|list|status|cancel``: the Batch API of a kakehashi server, from the
command line, through the official ``openai`` SDK.

``--base-url`` and ``--api-key`` default to ``KAKEHASHI_BASE_URL`` and ``KAKEHASHI_API_KEY``
(or a ``.env`` file), else ``http://127.0.0.1:8000/v1`` without a key, as ``kakehashi chat``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch
    from rich.console import Console

app = typer.Typer(
    name="batch",
    help="Run a JSONL file of requests as a batch on a kakehashi server.",
    no_args_is_help=True,
    add_completion=False,
)

BaseUrl = Annotated[
    str | None,
    typer.Option(help="The server's base URL (default: $KAKEHASHI_BASE_URL or 127.0.0.1:8000)."),
]
ApiKey = Annotated[str | None, typer.Option(help="API key (default: $KAKEHASHI_API_KEY, or none).")]


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(message: str) -> typer.Exit:
    from rich.markup import escape

    _console(stderr=True).print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(1)


def _client(base_url: str | None, api_key: str | None) -> OpenAI:
    import openai

    from kakehashi.client.providers import resolve

    endpoint = resolve(None, provider="kakehashi", base_url=base_url, api_key=api_key)
    return openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=2)


def _summary(batch: Batch) -> str:
    from kakehashi.client.batch import counts

    c = counts(batch)
    return (
        f"{batch.id}  {batch.status}  {c['completed']} done, {c['failed']} failed of {c['total']}"
    )


@app.command("submit")
def submit_command(
    file: Annotated[Path, typer.Argument(help="JSONL: batch request lines, or request bodies.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model for lines that name none.")
    ] = None,
    endpoint: Annotated[
        str, typer.Option(help="/v1/chat/completions, /v1/completions or /v1/embeddings.")
    ] = "/v1/chat/completions",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it with a progress bar; write the output.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where --wait writes the output lines."),
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="KEY=VALUE, repeatable.")
    ] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload FILE and create a batch; print its id (with --wait, follow it to the end)."""
    from kakehashi.client import batch as batches
    from kakehashi.client.errors import ClientError

    if not file.is_file():
        raise typer.BadParameter(f"no such file: {file}", param_hint="FILE")
    tags: dict[str, str] = {}
    for item in metadata or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--metadata")
        tags[key] = value
    if output is not None and not wait:
        raise typer.BadParameter("only --wait writes the output", param_hint="--output")
    try:
        client = _client(base_url, api_key)
        with tempfile.TemporaryDirectory(prefix="kakehashi-batch-") as scratch:
            created = batches.submit(
                client,
                file,
                model=model,
                endpoint=endpoint,
                metadata=tags or None,
                scratch=Path(scratch),
            )
        if not wait:
            typer.echo(created.id)
            return
        _console(stderr=True).print(f"batch {created.id} created")
        finished = _follow(client, created.id)
        _write_results(client, finished, output or file.with_suffix(".output.jsonl"))
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if finished.status != "completed":
        raise typer.Exit(1)


def _follow(client: OpenAI, batch_id: str) -> Batch:
    """Poll the batch with a progress bar until it is over."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kakehashi.client.batch import counts, wait

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=_console(stderr=True),
    ) as progress:
        task = progress.add_task("validating", total=None, failed=0)

        def show(batch: Batch) -> None:
            c = counts(batch)
            progress.update(
                task,
                description=batch.status,
                total=c["total"] or None,
                completed=c["completed"] + c["failed"],
                failed=c["failed"],
            )

        return wait(client, batch_id, on_update=show)


def _write_results(client: OpenAI, batch: Batch, output: Path) -> None:
    from kakehashi.client.batch import download

    console = _console(stderr=True)
    console.print(_summary(batch))
    if batch.errors and batch.errors.data:
        for error in batch.errors.data[:20]:
            where = f"line {error.line}: " if error.line is not None else ""
            console.print(f"  {where}{error.message} ({error.code})", markup=False)
    if batch.output_file_id:
        download(client, batch.output_file_id, output)
        console.print(f"output written to {output}", markup=False)
    if batch.error_file_id:
        errors = output.with_name(output.stem + ".errors.jsonl")
        download(client, batch.error_file_id, errors)
        console.print(f"failed lines written to {errors}", markup=False)


@app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The newest batches."""
    from rich.table import Table

    from kakehashi.client.batch import counts, list_batches
    from kakehashi.client.errors import ClientError

    try:
        found = list_batches(_client(base_url, api_key), limit=limit)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        for batch in found:
            typer.echo(json.dumps(batch.model_dump(mode="json")))
        return
    table = Table("id", "status", "endpoint", "done", "failed", "total", "created")
    for batch in found:
        c = counts(batch)
        table.add_row(
            batch.id,
            batch.status,
            batch.endpoint,
            str(c["completed"]),
            str(c["failed"]),
            str(c["total"]),
            str(batch.created_at),
        )
    _console().print(table)


@app.command("status")
def status_command(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """One batch: its status and counts (--json: the whole object)."""
    from kakehashi.client.batch import retrieve
    from kakehashi.client.errors import ClientError

    try:
        batch = retrieve(_client(base_url, api_key), batch_id)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(batch.model_dump(mode="json"), indent=2))
        return
    typer.echo(_summary(batch))
    for name in ("output_file_id", "error_file_id"):
        if getattr(batch, name):
            typer.echo(f"{name}: {getattr(batch, name)}")
    for error in (batch.errors.data if batch.errors and batch.errors.data else [])[:20]:
        where = f"line {error.line}: " if error.line is not None else ""
        typer.echo(f"  {where}{error.message} ({error.code})")


@app.command("cancel")
def cancel_command(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_...).")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a batch: lines already done stay in its output."""
    from kakehashi.client.batch import cancel
    from kakehashi.client.errors import ClientError

    try:
        batch = cancel(_client(base_url, api_key), batch_id)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    typer.echo(_summary(batch))
