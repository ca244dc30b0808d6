"""A server without API keys cannot be driven from a web page: JSON bodies must say so, only
loopback (or listed) Host names are answered, CORS only for listed origins (issue 14, defect
8); its API docs are public, unlike a keyed server's; its body limit is configurable."""

from __future__ import annotations

import json

import httpx
import pytest

from e2e.common import LLAMA_MODEL
from e2e.conftest import OPEN_ALLOWED_HOST, OPEN_CORS_ORIGIN, OPEN_MAX_BODY
from support.contract import check_response
from support.server import ServerProcess

BODY = json.dumps(
    {"model": LLAMA_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)


def _post(server: ServerProcess, headers: dict[str, str], body: str = BODY) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", content=body, headers=headers)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"],
)
def test_a_body_not_declared_json_is_a_415(
    open_server: ServerProcess, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = _post(open_server, headers)
    assert response.status_code == 415, response.text
    error = check_response(response).json["error"]
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_json_bodies_are_served(open_server: ServerProcess, content_type: str) -> None:
    response = _post(open_server, {"Content-Type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "127.1.2.3", "[::1]", OPEN_ALLOWED_HOST, "LOCALHOST."]
)
def test_loopback_and_listed_hosts_are_answered(open_server: ServerProcess, host: str) -> None:
    port = open_server.root_url.rsplit(":", 1)[1]
    headers = {"Content-Type": "application/json", "Host": f"{host}:{port}"}
    assert _post(open_server, headers).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "rebind.attacker.test:8000", "192.168.1.5", "api.example.test.evil"]
)
def test_other_hosts_are_refused(open_server: ServerProcess, host: str) -> None:
    for response in (
        _post(open_server, {"Content-Type": "application/json", "Host": host}),
        httpx.get(f"{open_server.base_url}/models", headers={"Host": host}),
    ):
        assert response.status_code == 400, response.text
        error = check_response(response).json["error"]
        assert error["code"] == "invalid_host"
        assert "--allowed-host" in error["message"]


def test_cors_only_for_the_listed_origin(open_server: ServerProcess) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    url = f"{open_server.base_url}/chat/completions"
    allowed = httpx.options(url, headers={**preflight, "Origin": OPEN_CORS_ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == OPEN_CORS_ORIGIN
    other = httpx.options(url, headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    simple = _post(open_server, {"Content-Type": "application/json", "Origin": OPEN_CORS_ORIGIN})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == OPEN_CORS_ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_an_open_server_serves_its_api_docs(open_server: ServerProcess) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{open_server.root_url}{path}").status_code == 200


def test_the_body_limit_is_configurable(open_server: ServerProcess) -> None:
    body = json.dumps({"model": LLAMA_MODEL, "prompt": "p" * OPEN_MAX_BODY})
    response = httpx.post(
        f"{open_server.base_url}/completions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert str(OPEN_MAX_BODY) in check_response(response).json["error"]["message"]
