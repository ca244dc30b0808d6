"""``kakehashi make-tiny-model``: a tiny random-weight model directory for tests and trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
