"""Choosing which turns go: the fewest oldest turns that bring a conversation under budget."""

from __future__ import annotations

import pytest

from kakehashi.client.history import turns_of, turns_to_drop


def test_turns_start_at_user_messages() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "assistant", "content": "e"},
        {"role": "user", "content": "f"},
    ]
    assert [[m["content"] for m in turn] for turn in turns_of(messages)] == [
        ["a", "b"],
        ["c", "d", "e"],
        ["f"],
    ]
    assert turns_of([]) == []


@pytest.mark.parametrize("turns", [1, 2, 7, 50])
def test_finds_the_fewest_turns_with_few_measurements(turns: int) -> None:
    sizes = [10 + 3 * i for i in range(turns)]  # turn i costs sizes[i] tokens
    for budget in range(0, sum(sizes) + 5):
        calls: list[int] = []

        def measure(k: int, calls: list[int] = calls) -> int:
            calls.append(k)
            return 5 + sum(sizes[k:])

        found = turns_to_drop(measure, turns, budget)
        fits = [k for k in range(turns + 1) if 5 + sum(sizes[k:]) <= budget]
        assert found == (fits[0] if fits else None)
        assert len(calls) <= 3 + 2 * max(1, turns).bit_length()


def test_nothing_to_drop() -> None:
    assert turns_to_drop(lambda k: 100, 0, 50) is None
    assert turns_to_drop(lambda k: 10, 0, 50) == 0
