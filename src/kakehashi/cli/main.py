"""The ``kakehashi`` command line: ``serve`` and ``make-tiny-model``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel

from kakehashi.settings import DEMO_MODEL_ID, Settings

app = typer.Typer(
    name="kakehashi",
    help="A self-hosted, OpenAI-compatible LLM API server.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings(overrides: dict[str, Any]) -> Settings:
    """Settings from ``KAKEHASHI_*`` env, with the flags that were given on top."""
    given = {key: value for key, value in overrides.items() if value not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(problems) from None


def _resolve_model(settings: Settings, console: Console) -> Path:
    """The model directory to serve: the configured one, or the demo (created if missing)."""
    from kakehashi.engine.models.loader import ModelSourceError, resolve_model_source
    from kakehashi.engine.models.tiny import demo_model_dir

    if settings.model is None:
        console.print(
            Panel(
                f"No --model given: serving the built-in demo model [bold]{DEMO_MODEL_ID}[/].\n"
                "It is UNTRAINED (random weights), so its output is gibberish. It exists so "
                "that you can try the API without downloading anything.\n"
                "To serve a real model: [bold]kakehashi serve --model /path/to/hf-model-dir[/] "
                "or a Hugging Face hub id such as "
                "[bold]kakehashi serve --model Qwen/Qwen2.5-0.5B-Instruct[/].",
                title="demo model",
                border_style="yellow",
            )
        )
        return demo_model_dir(settings.data_dir)
    try:
        return resolve_model_source(settings.model)
    except ModelSourceError as exc:
        console.print(f"[red]error:[/] cannot load model {settings.model!r}: {exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="Hugging Face model directory or hub id (default: the demo model)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Public model id (default: the directory name).")
    ] = None,
    alias: Annotated[
        list[str] | None, typer.Option(help="Another public id for the model (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="Accept this API key (repeatable); without any, the server is open."),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Context window in tokens (default: the model's).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16.")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: all cores).")] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="Most sequences decoded at once.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the OpenAI API (chat completions, completions, models) from a local model.

    Every flag can also be set as a KAKEHASHI_<NAME> environment variable; flags win.
    """
    import uvicorn

    from kakehashi.api.app import create_app
    from kakehashi.backends.local import default_model_id

    console = Console(stderr=True)
    settings = _settings(
        {
            "model": model,
            "served_model_name": served_model_name,
            "aliases": alias,
            "host": host,
            "port": port,
            "api_keys": api_key,
            "max_model_len": max_model_len,
            "dtype": dtype,
            "threads": threads,
            "max_num_seqs": max_num_seqs,
        }
    )
    model_id = default_model_id(settings)
    model_dir = _resolve_model(settings, console)
    settings = settings.model_copy(update={"model": str(model_dir), "served_model_name": model_id})
    if not settings.auth_enabled:
        console.print(
            "[yellow]warning:[/] no API keys configured (--api-key or KAKEHASHI_API_KEYS): "
            "anyone who can reach this server can use it."
        )
    names = ", ".join([model_id, *settings.aliases])
    console.print(
        Panel(
            f"model: [bold]{names}[/] ({model_dir})\n"
            f"OpenAI base URL: [bold]http://{settings.host}:{settings.port}/v1[/]",
            title="kakehashi",
            border_style="green",
        )
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


@app.command("make-tiny-model")
def make_tiny_model_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
    arch: Annotated[str, typer.Option(help="llama or qwen2.")] = "llama",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write a tiny random-weight model (Hugging Face layout) that kakehashi can serve."""
    from kakehashi.engine.models.tiny import make_tiny_model

    if arch not in ("llama", "qwen2"):
        raise typer.BadParameter("must be llama or qwen2", param_hint="--arch")
    path = make_tiny_model(directory, arch=arch, seed=seed)  # type: ignore[arg-type]
    typer.echo(f"wrote a tiny {arch} model to {path}")


if __name__ == "__main__":
    app()
