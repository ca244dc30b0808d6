"""How ``kakehashi chat`` shows things: streamed markdown, token probabilities, usage."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from kakehashi.client.chatbot import Chatbot, TokenProbability

# Backgrounds from likely to unlikely, as in the colour views of token probabilities.
_SHADES = ((0.9, "dark_green"), (0.6, "green4"), (0.3, "dark_goldenrod"), (0.1, "dark_orange3"))
_UNLIKELY = "red3"
MAX_LOGPROB_ROWS = 60


def stream_answer(console: Console, pieces: Iterable[str]) -> str:
    """Show an answer as it arrives: live markdown on a terminal, plain text elsewhere."""
    text = ""
    if not console.is_terminal:
        for piece in pieces:
            text += piece
            console.file.write(piece)
            console.file.flush()
        console.file.write("\n")
        return text
    with Live(console=console, refresh_per_second=12, vertical_overflow="visible") as live:
        for piece in pieces:
            text += piece
            live.update(Markdown(text))
    return text


def _shade(probability: float) -> str:
    for floor, colour in _SHADES:
        if probability >= floor:
            return colour
    return _UNLIKELY


def show_logprobs(console: Console, tokens: list[TokenProbability]) -> None:
    """The answer coloured by each token's probability, then each token's alternatives."""
    if not tokens:
        console.print("[dim](the server sent no logprobs for this answer)[/]")
        return
    coloured = Text()
    for token in tokens:
        coloured.append(token.token, style=f"white on {_shade(math.exp(token.logprob))}")
    console.print(coloured)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("token")
    table.add_column("p", justify="right")
    table.add_column("alternatives")
    for token in tokens[:MAX_LOGPROB_ROWS]:
        alternatives = Text()
        for text, logprob in token.top:
            alternatives.append(f"{math.exp(logprob):.5f} ", style=_shade(math.exp(logprob)))
            alternatives.append(f"{text!r}  ")
        probability = math.exp(token.logprob)
        table.add_row(
            repr(token.token), Text(f"{probability:.5f}", _shade(probability)), alternatives
        )
    console.print(table)
    if len(tokens) > MAX_LOGPROB_ROWS:
        console.print(f"[dim]… and {len(tokens) - MAX_LOGPROB_ROWS} more tokens[/]")


def show_usage(console: Console, bot: Chatbot) -> None:
    """The last request's tokens, the whole session's, and the context window."""
    last, total = bot.usage.last, bot.usage.total
    if last is None:
        console.print("last request: [dim]no usage reported[/]")
    else:
        console.print(
            f"last request: {last.prompt_tokens} prompt + {last.completion_tokens} completion "
            f"= {last.total_tokens} tokens"
        )
    console.print(
        f"this session: {total.prompt_tokens} prompt + {total.completion_tokens} completion "
        f"= {total.total_tokens} tokens"
    )
    window = bot.context_window
    counted = {True: "exact counts", False: "estimated counts", None: "not counted yet"}
    where = f"{window} tokens" if window else "unknown (turns are dropped when the server refuses)"
    console.print(f"context window: {where} ({counted[bot.counter.exact]})")
