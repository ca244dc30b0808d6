"""``kakehashi summarize URL | FILE | -``: the main text, summarized by map-reduce, streamed."""

from __future__ import annotations

import itertools
from typing import Annotated

import typer


def summarize_command(
    source: Annotated[str, typer.Argument(help="A URL, an HTML or text file, or - for stdin.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model id (default: the server's first model)."),
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="openai, gemini, xai, plamo, lmstudio, ollama...")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="An OpenAI-compatible base URL.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default: from env or .env).")] = (
        None
    ),
    length: Annotated[str, typer.Option(help="short or long.")] = "short",
    language: Annotated[
        str | None, typer.Option(help="Write the summary in this language (default: the text's).")
    ] = None,
    context_window: Annotated[
        int | None, typer.Option(min=64, help="Context window (default: from /v1/models).")
    ] = None,
    chunk_tokens: Annotated[
        int | None, typer.Option(min=16, help="Tokens per chunk (default: what fits).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
) -> None:
    """Summarize a web page or a document, chunk by chunk, with a progress bar."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from kakehashi.cli.chat_view import stream_answer
    from kakehashi.client.chatbot import Chatbot
    from kakehashi.client.errors import ClientError
    from kakehashi.client.summarize import LENGTHS, Summarizer, read_source

    if length not in LENGTHS:
        raise typer.BadParameter("must be short or long", param_hint="--length")
    errors = Console(stderr=True, highlight=False)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=errors
    )
    task = progress.add_task("summarizing chunks", start=False, visible=False)

    def on_chunks(total: int) -> None:
        progress.reset(task, total=total, completed=0, visible=True)
        progress.update(task, description=f"summarizing {total} chunks")
        progress.start_task(task)

    try:
        document = read_source(source)
        bot = Chatbot(
            model,
            provider=provider,
            base_url=base_url,
            api_key=api_key,
            temperature=temperature,
            context_window=context_window,
            on_trim=lambda trim: None,
        )
        summarizer = Summarizer(
            bot,
            length=length,  # type: ignore[arg-type]
            language=language,
            chunk_tokens=chunk_tokens,
            on_chunks=on_chunks,
            on_done=lambda: progress.advance(task),
        )
        with progress:
            pieces = summarizer.summarize(document)
            first = next(pieces, "")  # the map rounds run before the first piece
        stream_answer(Console(highlight=False), itertools.chain([first], pieces))
    except ClientError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
