"""``kakehashi serve``: the OpenAI API over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kakehashi.cli.common import (
    ConfigOption,
    NowOption,
    build_or_exit,
    download_progress,
    exit_with,
    load_settings,
    log_to_stderr,
)
from kakehashi.engine.models.default_model import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_ID,
    TINY_RANDOM_MODEL_ID,
)

if TYPE_CHECKING:
    from rich.console import Console

    from kakehashi.engine.models.checkpoint import Checkpoint
    from kakehashi.settings import Settings


def _check_device(settings: Settings, console: Console) -> None:
    """Exit with a message, before anything loads, if the configured device is not here."""
    from kakehashi.engine.builder import resolve_device

    try:
        resolve_device(settings.device)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _open_model(settings: Settings, console: Console) -> Checkpoint:
    """The model to serve, found (the default one fetched on first use), opened and checked:
    a broken or unsupported model is one line and exit code 2, before the server starts."""
    from kakehashi.engine.chat_template import ChatTemplateError
    from kakehashi.engine.models.checkpoint import open_checkpoint
    from kakehashi.engine.models.default_model import ModelDownloadError
    from kakehashi.engine.models.registry import UnsupportedModelError
    from kakehashi.engine.models.sources import ModelSourceError, locate_model

    shown = settings.model or DEFAULT_MODEL_ID
    try:
        with download_progress(console, DEFAULT_MODEL_FILE) as progress:
            path = locate_model(
                settings.model,
                data_dir=settings.data_dir,
                index_url=settings.model_index_url,
                progress=progress,
            )
        checkpoint = open_checkpoint(path)
        checkpoint.tokenizer()
        checkpoint.chat_template()
    except ModelDownloadError as exc:
        exit_with(console, f"cannot fetch the default model {DEFAULT_MODEL_ID}: {exc}")
    except (ModelSourceError, UnsupportedModelError, ChatTemplateError) as exc:
        exit_with(console, f"cannot load model {shown!r}: {exc}")
    return checkpoint


def _embeddings_line(settings: Settings, served: bool) -> str:
    if served:
        return ""
    if not settings.embeddings:
        return "embeddings: [yellow]off[/] (--no-embeddings)"
    return "embeddings: [yellow]not served[/]; pip install 'kakehashi\\[embeddings]' adds them"


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            # Backslashes keep rich's markup from reading [:TAG] and [/FILE] as tags.
            help=(
                "A GGUF file, a model directory, ollama:NAME\\[:TAG], "
                f"lmstudio:PUBLISHER/REPO\\[/FILE], {TINY_RANDOM_MODEL_ID} or a hub id "
                f"(default: {DEFAULT_MODEL_ID}, fetched on first use)."
            )
        ),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Public model id (default: the file or directory name).")
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
    max_body_size: Annotated[
        str | None,
        typer.Option(help="Largest request body accepted, e.g. 16MiB (default: 4MiB)."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name a server without API keys answers besides localhost, 127.0.0.1 "
            "and [::1] (repeatable; '*' for any)."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="A web origin allowed to call the API from a browser (repeatable)."),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a SIGTERM waits for requests in flight before aborting them "
            "(default: 30)."
        ),
    ] = None,
    local_model: Annotated[
        bool | None,
        typer.Option(
            "--local-model/--no-local-model",
            help="Serve a local language model (default: yes); without one, kakehashi is a "
            "gateway to its [[upstreams]].",
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
    from rich.console import Console
    from rich.panel import Panel

    from kakehashi.api.app import create_app, default_backends
    from kakehashi.api.server import serve as serve_app
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
            "max_body_size": max_body_size,
            "allowed_hosts": allowed_host,
            "cors_origins": cors_origin,
            "drain_timeout": drain_timeout,
            "local_model": local_model,
            "now": now,
        },
        config,
    )
    checkpoint: Checkpoint | None = None
    if settings.local_model:
        model_id = default_model_id(settings)
        _check_device(settings, console)
        checkpoint = _open_model(settings, console)
        settings = settings.model_copy(
            update={"model": str(checkpoint.path), "served_model_name": model_id}
        )
    log_to_stderr(log_level)
    application = build_or_exit(
        console, lambda: create_app(settings, backends=default_backends(settings, checkpoint))
    )
    if not application.state.key_store.auth_required:
        console.print(
            "[yellow]warning:[/] no API keys (--api-key, KAKEHASHI_API_KEYS or "
            "kakehashi keys create): anyone who can reach this server can use it."
        )
        if not settings.allowed_hosts:
            console.print(
                "It answers only requests addressed to localhost, 127.0.0.1 or [::1]; "
                "name others with --allowed-host."
            )
    service = application.state.service
    lines = []
    for backend in service.catalog.backends():
        names = ", ".join(m.id for m in backend.served_models()) or "(by glob)"
        where = f" ({checkpoint.path})" if backend.name == "local" and checkpoint else ""
        via = (
            f"upstream {backend.name}: "
            if backend.name not in ("local", "local-embeddings")
            else ""
        )
        lines.append(f"model: {via}[bold]{names}[/]{where}")
    served = [m for b in service.catalog.backends() for m in b.served_models()]
    embeds = any("embeddings" in m.capabilities for m in served)
    embedding_note = _embeddings_line(settings, served=embeds)
    if embedding_note:
        lines.append(embedding_note)
    if settings.now is not None:
        lines.append(f"lifecycle clock fixed at [bold]{settings.now.isoformat()}[/]")
    lines.append(f"OpenAI base URL: [bold]http://{settings.host}:{settings.port}/v1[/]")
    console.print(Panel("\n".join(lines), title="kakehashi", border_style="green"))
    serve_app(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        drain_timeout=settings.drain_timeout,
    )
