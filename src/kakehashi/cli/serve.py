"""``kakehashi serve``: the OpenAI API over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kakehashi.cli.common import (
    ConfigOption,
    NowOption,
    build_or_exit,
    load_settings,
    log_to_stderr,
)

if TYPE_CHECKING:
    from rich.console import Console

    from kakehashi.settings import Settings


def _check_device(settings: Settings, console: Console) -> None:
    """Exit with a message, before anything loads, if the configured device is not here."""
    from kakehashi.engine.builder import resolve_device

    try:
        resolve_device(settings.device)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _resolve_model(settings: Settings, console: Console) -> Path:
    """The model directory to serve: the configured one, or the demo (created if missing)."""
    from rich.panel import Panel

    from kakehashi.engine.models.loader import ModelSourceError, resolve_model_source
    from kakehashi.engine.models.tiny import demo_model_dir
    from kakehashi.settings import DEMO_MODEL_ID

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
        typer.Option(
            help="Accept this API key, as KEY or KEY:TIER (repeatable); without any key the "
            "server is open."
        ),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Context window in tokens (default: the model's).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16.")] = None,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda or cuda:N (default: auto, a CUDA GPU if torch sees one)."),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: all cores).")] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="Most sequences decoded at once.")
    ] = None,
    kv_cache_memory: Annotated[
        str | None,
        typer.Option(help="KV cache budget, e.g. 2GiB (default: from --max-num-seqs and RAM)."),
    ] = None,
    max_queue_len: Annotated[
        int | None,
        typer.Option(help="Requests that may wait for a slot; more get a 503 (default: 256)."),
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="Tokens per engine step; bounds prefill chunks.")
    ] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            help="Reuse the KV cache of shared prompt prefixes (default: yes).",
        ),
    ] = None,
    cpu_kernels: Annotated[
        bool | None,
        typer.Option(
            "--cpu-kernels/--no-cpu-kernels",
            help="Our AVX-512 BF16 kernels for bfloat16 decode, built on first use (default: yes).",
        ),
    ] = None,
    embeddings: Annotated[
        bool | None,
        typer.Option(
            "--embeddings/--no-embeddings",
            help="Serve an embedding model (default: yes, when one is installed).",
        ),
    ] = None,
    embedding_model: Annotated[
        str | None,
        typer.Option(
            help="Sentence-transformers model directory (default: the packaged all-MiniLM-L6-v2)."
        ),
    ] = None,
    config: ConfigOption = None,
    now: NowOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the OpenAI API (chat completions, completions, embeddings, edits, models).

    Every flag can also be set as a KAKEHASHI_<NAME> environment variable or in the --config
    file; flags win over the environment, which wins over the file.
    """
    import uvicorn
    from rich.console import Console
    from rich.panel import Panel

    from kakehashi.api.app import create_app
    from kakehashi.backends.local import default_model_id

    console = Console(stderr=True)
    settings = load_settings(
        {
            "model": model,
            "served_model_name": served_model_name,
            "aliases": alias,
            "host": host,
            "port": port,
            "api_keys": api_key,
            "max_model_len": max_model_len,
            "dtype": dtype,
            "device": device,
            "threads": threads,
            "max_num_seqs": max_num_seqs,
            "kv_cache_memory": kv_cache_memory,
            "max_queue_len": max_queue_len,
            "max_num_batched_tokens": max_num_batched_tokens,
            "prefix_caching": prefix_caching,
            "cpu_kernels": cpu_kernels,
            "embeddings": embeddings,
            "embedding_model": embedding_model,
            "now": now,
        },
        config,
    )
    model_id = default_model_id(settings)
    _check_device(settings, console)
    model_dir = _resolve_model(settings, console)
    settings = settings.model_copy(update={"model": str(model_dir), "served_model_name": model_id})
    if not settings.auth_enabled:
        console.print(
            "[yellow]warning:[/] no API keys configured (--api-key or KAKEHASHI_API_KEYS): "
            "anyone who can reach this server can use it."
        )
    log_to_stderr(log_level)
    application = build_or_exit(console, lambda: create_app(settings))
    service = application.state.service
    lines = []
    for backend in service.catalog.backends():
        names = ", ".join(m.id for m in backend.served_models())
        lines.append(f"model: [bold]{names}[/]")
    lines[0] += f" ({model_dir})"
    if settings.now is not None:
        lines.append(f"lifecycle clock fixed at [bold]{settings.now.isoformat()}[/]")
    lines.append(f"OpenAI base URL: [bold]http://{settings.host}:{settings.port}/v1[/]")
    console.print(Panel("\n".join(lines), title="kakehashi", border_style="green"))
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level)
