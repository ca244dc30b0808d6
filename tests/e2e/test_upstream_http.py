"""The upstream HTTP clients (aiohttp's HTTP/1.1 and httpx's) against the fault-injecting
upstream on 127.0.0.1: the same answers, the same failures, whichever client carries them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kakehashi.backends.upstream_http import (
    AiohttpClient,
    HttpxClient,
    Timeouts,
    TransportFailure,
    UpstreamHttp,
    open_client,
)
from support.server import RunningProcess, free_port, run_fake_upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}
GENEROUS = Timeouts(connect=5, read=10, write=5, pool=5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningProcess]:
    with run_fake_upstream("wire", chunks=4) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(upstream: RunningProcess) -> None:
    httpx.post(upstream.root_url + "/_reset").raise_for_status()


def _fault(upstream: RunningProcess, **fault: Any) -> None:
    httpx.post(upstream.root_url + "/_faults", json=[fault]).raise_for_status()


def _client(kind: str, base_url: str) -> UpstreamHttp:
    headers = {"User-Agent": "kakehashi", "Authorization": "Bearer sk-upstream"}
    if kind == "aiohttp":
        return AiohttpClient(base_url, headers, max_connections=4)
    return HttpxClient(base_url, headers, max_connections=4, http2=True)


async def _post(
    kind: str, base_url: str, body: dict[str, Any], timeouts: Timeouts = GENEROUS
) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """Status, a few headers, the body read whole, and (for a second request on the same pool)
    the body as chunks."""
    client = _client(kind, base_url)
    try:
        payload = json.dumps(body).encode()
        async with client.post("/chat/completions", payload, timeouts) as response:
            wanted = ("content-type", "Retry-After")
            headers = {name: response.headers.get(name, "") for name in wanted}
            status, whole = response.status, await response.read()
        async with client.post("/chat/completions", payload, timeouts) as response:
            pieces = [chunk async for chunk in response.chunks()]
        return status, headers, whole, pieces
    finally:
        await client.aclose()


CLIENTS = ("aiohttp", "httpx")


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_whole_answer_and_a_stream_arrive_intact(kind: str, upstream: RunningProcess) -> None:
    base = upstream.root_url + "/v1"
    status, headers, whole, pieces = asyncio.run(_post(kind, base, CHAT))
    assert status == 200 and headers["content-type"] == "application/json"
    answer, again = json.loads(whole), json.loads(b"".join(pieces))
    assert answer["choices"][0]["message"]["content"] == "hello from wire w1 w2 w3"
    assert again["choices"] == answer["choices"] and again["usage"] == answer["usage"]
    sent = httpx.get(upstream.root_url + "/_stats").json()["bodies"][-1]
    assert sent == CHAT  # the JSON as given, UTF-8 and all

    status, headers, whole, pieces = asyncio.run(_post(kind, base, {**CHAT, "stream": True}))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert whole.startswith(b"data: {") and whole.endswith(b"data: [DONE]\n\n")
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_error_status_comes_back_with_its_headers(kind: str, upstream: RunningProcess) -> None:
    _fault(upstream, status=429, retry_after=3)
    status, headers, whole, _ = asyncio.run(_post(kind, upstream.root_url + "/v1", CHAT))
    assert status == 429 and headers["Retry-After"] == "3"
    assert json.loads(whole)["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_upstream_nobody_listens_on_is_a_connect_failure(kind: str) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TransportFailure) as failure:
        asyncio.run(_post(kind, base, CHAT))
    assert failure.value.kind == "connect"


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_upstream_that_does_not_answer_is_a_read_timeout(
    kind: str, upstream: RunningProcess
) -> None:
    _fault(upstream, hang=5)
    short = Timeouts(connect=5, read=0.3, write=5, pool=5)
    with pytest.raises(TransportFailure) as failure:
        asyncio.run(_post(kind, upstream.root_url + "/v1", CHAT, short))
    assert failure.value.kind == "read_timeout"


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_connection_dropped_midway_is_broken(kind: str, upstream: RunningProcess) -> None:
    async def read_stream() -> bytes:
        client = _client(kind, upstream.root_url + "/v1")
        try:
            body = json.dumps({**CHAT, "stream": True}).encode()
            async with client.post("/chat/completions", body, GENEROUS) as response:
                received = b""
                async for chunk in response.chunks():
                    received += chunk
                return received
        finally:
            await client.aclose()

    _fault(upstream, close_after=2)
    with pytest.raises(TransportFailure) as failure:
        asyncio.run(read_stream())
    assert failure.value.kind == "broken"


def test_https_upstreams_that_may_offer_http2_go_through_httpx() -> None:
    async def kinds() -> list[type]:
        made = [
            open_client("https://api.example/v1", {}, max_connections=1, http2=True),
            open_client("https://api.example/v1", {}, max_connections=1, http2=False),
            open_client("http://127.0.0.1:1/v1", {}, max_connections=1, http2=True),
        ]
        for client in made:
            await client.aclose()
        return [type(client) for client in made]

    assert asyncio.run(kinds()) == [HttpxClient, AiohttpClient, AiohttpClient]
