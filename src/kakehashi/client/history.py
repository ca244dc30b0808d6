"""Fitting a conversation into a context window by dropping its oldest turns.

Pure logic over a ``measure`` callable (the token count of the conversation with the first
``k`` turns dropped), so it is tested without a server. Each measurement is a request to a
tokenizer endpoint, so the search tries one turn first (the common case once a conversation is
full), then gallops and bisects: a handful of requests even when many turns must go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Message = dict[str, Any]


def turns_of(messages: Sequence[Message]) -> list[list[Message]]:
    """``messages`` (no system message) cut into turns: each starts at a user message and
    holds the replies that follow it."""
    turns: list[list[Message]] = []
    for message in messages:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def turns_to_drop(measure: Callable[[int], int], droppable: int, budget: int) -> int | None:
    """The fewest oldest turns (at most ``droppable``) to drop so that ``measure(k) <= budget``,
    or ``None`` if even dropping them all is not enough. ``measure`` must not increase with
    ``k``."""
    if measure(0) <= budget:
        return 0
    if droppable == 0:
        return None
    low, high = 0, 1  # measure(low) is over budget; try high
    while measure(high) > budget:
        if high == droppable:
            return None
        low, high = high, min(droppable, high * 2)
    while high - low > 1:
        middle = (low + high) // 2
        if measure(middle) <= budget:
            high = middle
        else:
            low = middle
    return high
