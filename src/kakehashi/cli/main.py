"""The ``kakehashi`` command line: one module per command group, registered here."""

from __future__ import annotations

import typer

from kakehashi.cli import batch, chat, keys, migrate, models, serve, summarize, tiny, usage

app = typer.Typer(
    name="kakehashi",
    help="A self-hosted, OpenAI-compatible LLM API server.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("models")(models.models_command)
app.command("make-tiny-model")(tiny.make_tiny_model_command)
app.command("chat")(chat.chat_command)
app.command("logs")(chat.logs_command)
app.command("summarize")(summarize.summarize_command)
app.command("migrate")(migrate.migrate_command)
app.add_typer(keys.app, name="keys")
app.add_typer(batch.app, name="batch")
app.command("usage")(usage.usage_command)


if __name__ == "__main__":
    app()
