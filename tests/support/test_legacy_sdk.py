"""The 0.28 SDK installs apart from the modern one and snippets hand back JSON."""

from __future__ import annotations

import pytest

from support.legacy_sdk import ensure_legacy_openai, run_snippet


def test_snippet_sees_openai_028_and_variables() -> None:
    target = ensure_legacy_openai()
    result = run_snippet(
        target,
        """
        import openai
        result = {"version": openai.version.VERSION, "has_chat": hasattr(openai, "ChatCompletion"),
                  "echo": ECHO}
        """,
        variables={"ECHO": [1, "two"]},
    )
    assert result == {"version": "0.28.1", "has_chat": True, "echo": [1, "two"]}


def test_failing_snippet_reports_its_traceback() -> None:
    target = ensure_legacy_openai()
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_snippet(target, "result = 1 / 0")
