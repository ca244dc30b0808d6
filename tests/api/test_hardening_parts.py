"""The pieces behind issue 14, one by one: JSON body checks, Host names, the warning summary,
the drain (the real server is tested end to end in ``tests/e2e``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kakehashi.api.body import MAX_JSON_DEPTH, decode_json, is_json_media_type
from kakehashi.api.drain import Drain
from kakehashi.api.errors import ThrottledWarnings
from kakehashi.api.guards import HostGuardMiddleware, host_name, is_loopback_name
from kakehashi.errors import InvalidRequestError


def test_decode_json_names_where_a_lone_surrogate_is() -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_json(b'{"messages": [{"role": "user", "content": "ok"}, {"bad\\udc00key": 1}]}')
    assert info.value.param == "messages[1]"
    assert "\\udc00" in info.value.message
    assert decode_json('{"text": "橋 🌉"}'.encode()) == {"text": "橋 🌉"}


def test_decode_json_depth_limit() -> None:
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert decode_json(nested) is not None
    with pytest.raises(InvalidRequestError, match="more than 64 levels"):
        decode_json(b"[" + nested + b"]")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("text/json", False),
        (None, False),
        ("", False),
    ],
)
def test_json_media_types(header: str | None, ok: bool) -> None:
    assert is_json_media_type(header) is ok


@pytest.mark.parametrize(
    ("host", "name", "loopback"),
    [
        ("localhost:8000", "localhost", True),
        ("app.localhost", "app.localhost", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.9.9.9:1", "127.9.9.9", True),
        ("[::1]:8000", "::1", True),
        ("[::1", "::1", True),
        ("localhost.evil.test", "localhost.evil.test", False),
        ("EVIL.test.", "evil.test", False),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1", False),
    ],
)
def test_host_names(host: str, name: str, loopback: bool) -> None:
    assert host_name(host) == name
    assert is_loopback_name(name) is loopback


def test_allowed_host_patterns() -> None:
    guard = HostGuardMiddleware(app=None, allowed=["api.example.com", "*.corp.test"])  # type: ignore[arg-type]
    assert guard.accepts("API.example.com:443")
    assert guard.accepts("a.b.corp.test")
    assert not guard.accepts("corp.test.evil")
    assert not guard.accepts("example.com")
    assert HostGuardMiddleware(app=None, allowed=["*"]).accepts("anything")  # type: ignore[arg-type]


def test_throttled_warnings_summarise(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warnings = ThrottledWarnings(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for second in range(25):
            now[0] = float(second)
            warnings.warning("overload", "refused")
            warnings.warning("other", "other refused")
    overload = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert overload == [
        "refused",
        "refused (and 9 more like it in the last 10 s)",
        "refused (and 9 more like it in the last 10 s)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_drain_returns_when_requests_finish_before_the_deadline() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        drain = Drain()
        aborted = False

        async def abort() -> None:
            nonlocal aborted
            aborted = True

        drain.enter()
        asyncio.get_running_loop().call_later(0.1, drain.leave)
        started = asyncio.get_running_loop().time()
        finished = await drain.run(5.0, abort)
        return finished, aborted, asyncio.get_running_loop().time() - started

    finished, aborted, took = asyncio.run(scenario())
    assert finished and not aborted and took < 2.0
