"""kakehashi as a gateway: a real server in front of real fault-injecting upstreams on
127.0.0.1, driven with the official SDK and raw HTTP.

Upstreams: ``alpha`` and ``beta`` (healthy, both serving ``shared``), ``slow`` (paced chunks,
for disconnects) and ``errs``, behind one upstream entry per provider preset, which the tests
script to fail in each provider's own way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.common import API_KEY
from support.contract import check_response, sdk_http_client
from support.server import (
    RunningProcess,
    ServerProcess,
    free_port,
    run_fake_upstream,
    run_server,
)

PROVIDERS = ("gemini", "xai", "plamo", "lmstudio", "llama-server", "vllm", "ollama")


def _config(upstreams: dict[str, RunningProcess], usage_log: Path) -> str:
    def base(name: str) -> str:
        return upstreams[name].root_url + "/v1"

    lines = [
        f'usage_log = "{usage_log}"',
        "[gateway]",
        "max_retries = 2",
        "retry_backoff = 0.05",
        "breaker_failures = 3",
        "breaker_cooldown = 1.5",
        "[[upstreams]]",
        'name = "alpha"',
        f'base_url = "{base("alpha")}"',
        'models = ["alpha-*", "shared"]',
        'rename = { "alpha-renamed" = "upstream-name" }',
        "[[upstreams]]",
        'name = "beta"',
        f'base_url = "{base("beta")}"',
        'models = ["beta-*", "shared"]',
        "[[upstreams]]",
        'name = "slow"',
        f'base_url = "{base("slow")}"',
        'models = ["slow-*"]',
        "[[upstreams]]",
        'name = "flaky"',
        f'base_url = "{base("errs")}"',
        'models = ["flaky-*"]',
    ]
    for provider in PROVIDERS:
        lines += [
            "[[upstreams]]",
            f'name = "p-{provider}"',
            f'provider = "{provider}"',
            f'base_url = "{base("errs")}"',
            f'models = ["{provider}-*"]',
        ]
    lines += [
        "[[upstreams]]",
        'name = "grok"',
        'provider = "xai"',
        f'base_url = "{base("errs")}"',
        'models = ["grok-*"]',
        'drop_params = ["stop"]',
        "[[upstreams]]",
        'name = "dead"',
        f'base_url = "http://127.0.0.1:{free_port()}/v1"',
        'models = ["dead-*"]',
        "[[upstreams]]",
        'name = "sleepy"',
        f'base_url = "{base("errs")}"',
        'models = ["sleepy-*"]',
        "timeouts = { read = 0.4 }",
        "[[models]]",
        'id = "gpt-4"',
        'serves = "alpha-big"',
        'fallbacks = ["beta-small"]',
        "[[models]]",
        'id = "short-context"',
        'serves = "alpha-short"',
        'fallbacks = ["beta-long"]',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RunningProcess]]:
    with (
        run_fake_upstream("alpha") as alpha,
        run_fake_upstream("beta") as beta,
        run_fake_upstream("slow", chunks=400, delay=0.02) as slow,
        run_fake_upstream("errs") as errs,
    ):
        yield {"alpha": alpha, "beta": beta, "slow": slow, "errs": errs}


@pytest.fixture(scope="module")
def usage_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway") / "usage.jsonl"


@pytest.fixture(scope="module")
def gateway(
    upstreams: dict[str, RunningProcess], usage_log: Path, server_data_dir: Path
) -> Iterator[ServerProcess]:
    config = usage_log.with_name("gateway.toml")
    config.write_text(_config(upstreams, usage_log))
    with run_server(
        None,
        data_dir=server_data_dir,
        api_keys=[API_KEY],
        extra_args=["--no-local-model", "--no-embeddings", "--config", str(config)],
    ) as server:
        yield server


@pytest.fixture
def sdk(gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=sdk_http_client(timeout=60),
    )
    with client:
        yield client


@pytest.fixture(autouse=True)
def _fresh_upstreams(upstreams: dict[str, RunningProcess]) -> None:
    for upstream in upstreams.values():
        httpx.post(upstream.root_url + "/_reset")


def stats(upstream: RunningProcess) -> dict[str, Any]:
    return httpx.get(upstream.root_url + "/_stats").json()


def fault(upstream: RunningProcess, *faults: dict[str, Any]) -> None:
    httpx.post(upstream.root_url + "/_faults", json=list(faults)).raise_for_status()


def usage_records(log: Path, since: int = 0, *, wait_for: int = 0) -> list[dict[str, Any]]:
    """The usage log's records after the first ``since``, waiting (bounded) for ``wait_for``."""
    deadline = time.monotonic() + 10
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        records = [json.loads(line) for line in lines[since:]]
        if len(records) >= wait_for or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def log_size(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def post(gateway: ServerProcess, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers=gateway.auth_headers(),
        timeout=60,
        **kwargs,
    )


def chat_body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


# -- routing ------------------------------------------------------------------------------------


def test_routing_by_id_glob_and_rename(
    sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]
) -> None:
    res = sdk.chat.completions.create(
        model="alpha-one", messages=[{"role": "user", "content": "x"}]
    )
    assert res.model == "alpha-one"
    assert res.choices[0].message.content.startswith("hello from alpha")
    res = sdk.chat.completions.create(model="beta-two", messages=[{"role": "user", "content": "x"}])
    assert res.choices[0].message.content.startswith("hello from beta")
    res = sdk.chat.completions.create(
        model="alpha-renamed", messages=[{"role": "user", "content": "x"}]
    )
    assert res.model == "alpha-renamed"
    assert [b["model"] for b in stats(upstreams["alpha"])["bodies"]] == [
        "alpha-one",
        "upstream-name",
    ]
    listed = [m.id for m in sdk.models.list().data]
    assert "shared" in listed and "gpt-4" in listed and "alpha-one" not in listed
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(
            model="nobody-serves-this", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"


def test_requests_arrive_upstream_intact(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess]
) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    body = {
        "model": "alpha-vision",
        "messages": [{"role": "user", "content": parts}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "metadata": {"team": "a"},
        "service_tier": "flex",
        "temperature": 0.5,
    }
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    [received] = stats(upstreams["alpha"])["bodies"]
    assert received == body


def test_replicas_share_the_load(sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]) -> None:
    for _ in range(10):
        sdk.chat.completions.create(model="shared", messages=[{"role": "user", "content": "x"}])
    alpha, beta = stats(upstreams["alpha"])["requests"], stats(upstreams["beta"])["requests"]
    assert alpha + beta == 10
    assert 4 <= alpha <= 6, (alpha, beta)  # one at a time: they take turns


# -- retries, fallbacks, the breaker --------------------------------------------------------------


def test_a_429_is_retried_after_retry_after(
    sdk: openai.OpenAI, upstreams: dict[str, RunningProcess], usage_log: Path
) -> None:
    before = log_size(usage_log)
    fault(upstreams["alpha"], {"status": 429, "retry_after": 1})
    started = time.monotonic()
    res = sdk.chat.completions.create(model="alpha-a", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 1.0
    assert res.choices[0].message.content.startswith("hello from alpha")
    assert stats(upstreams["alpha"])["requests"] == 2
    records = usage_records(usage_log, before, wait_for=2)
    assert [(r["attempt"], r["status"], r["error_code"]) for r in records] == [
        (1, "error", "rate_limit_exceeded"),
        (2, "success", None),
    ]
    assert records[0]["request_id"] == records[1]["request_id"]


def test_fallback_after_the_retries(
    sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]
) -> None:
    fault(upstreams["alpha"], {"status": 500, "times": 3})
    res = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert res.model == "beta-small"
    assert res.choices[0].message.content.startswith("hello from beta")
    assert stats(upstreams["alpha"])["requests"] == 3


def test_context_length_falls_back_at_once(
    sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]
) -> None:
    too_long = {"status": 400, "message": "This model's maximum context length is 4096 tokens."}
    fault(upstreams["alpha"], too_long)
    res = sdk.chat.completions.create(
        model="short-context", messages=[{"role": "user", "content": "x"}]
    )
    assert res.model == "beta-long"
    assert stats(upstreams["alpha"])["requests"] == 1


def test_the_circuit_breaker_opens_and_closes(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess]
) -> None:
    errs = upstreams["errs"]
    fault(errs, {"status": 503, "times": -1})
    first = post(gateway, chat_body("flaky-a"))
    assert first.status_code == 503
    assert stats(errs)["requests"] == 3  # one try, two retries: the circuit opens
    refused = post(gateway, chat_body("flaky-a"))
    assert refused.status_code == 503
    assert "cooling down" in check_response(refused).json["error"]["message"]
    assert refused.headers["retry-after"]
    assert stats(errs)["requests"] == 3  # not even tried
    httpx.post(errs.root_url + "/_reset")
    time.sleep(1.6)  # the cool-down passes: the next request is the probe, and it succeeds
    probe = post(gateway, chat_body("flaky-a"))
    assert probe.status_code == 200, probe.text
    assert post(gateway, chat_body("flaky-a")).status_code == 200
    assert stats(errs)["requests"] == 2


# -- streams ----------------------------------------------------------------------------------


def _events(response: httpx.Response) -> list[Any]:
    events = []
    for frame in response.text.split("\n\n"):
        if frame.startswith("data: "):
            payload = frame.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_stream_usage_with_and_without_include_usage(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess], usage_log: Path
) -> None:
    before = log_size(usage_log)
    plain = _events(post(gateway, chat_body("alpha-s", stream=True)))
    assert plain[-1] == "[DONE]"
    assert all("usage" not in e for e in plain[:-1]) and all(e["choices"] for e in plain[:-1])
    asked = _events(
        post(gateway, chat_body("alpha-s", stream=True, stream_options={"include_usage": True}))
    )
    assert all(e["usage"] is None for e in asked[:-2])
    assert asked[-2]["choices"] == [] and asked[-2]["usage"]["completion_tokens"] == 8
    sent = stats(upstreams["alpha"])["bodies"]
    assert all(b["stream_options"] == {"include_usage": True} for b in sent)
    records = usage_records(usage_log, before, wait_for=2)
    assert [(r["streamed"], r["status"], r["completion_tokens"]) for r in records] == [
        (True, "success", 8),
        (True, "success", 8),
    ]
    assert records[0]["prompt_tokens"] > 0 and records[0]["time_to_first_token"] is not None


def test_a_stream_breaking_midway_ends_with_an_error_frame(
    gateway: ServerProcess, sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]
) -> None:
    for broken in ({"close_after": 3}, {"error_frame_after": 3}):
        fault(upstreams["alpha"], broken)
        events = _events(post(gateway, chat_body("alpha-b", stream=True)))
        assert "[DONE]" not in events
        *chunks, error = events
        assert len(chunks) == 3
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert isinstance(error["error"]["code"], str)
    assert stats(upstreams["alpha"])["requests"] == 2  # never retried after the first byte
    fault(upstreams["alpha"], {"close_after": 3})
    stream = sdk.chat.completions.create(
        model="alpha-b", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_a_client_disconnect_cancels_the_upstream_and_is_recorded(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess], usage_log: Path
) -> None:
    slow = upstreams["slow"]
    before = log_size(usage_log)
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{gateway.base_url}/chat/completions",
            json=chat_body("slow-x", stream=True),
            headers=gateway.auth_headers(),
        ) as response,
    ):
        lines = response.iter_lines()
        data = [line for _, line in zip(range(8), lines, strict=False)]
        assert any(line.startswith("data: ") for line in data)
    deadline = time.monotonic() + 10
    while stats(slow)["disconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(slow)["disconnects"] == 1
    assert stats(slow)["active"] == 0
    [record] = usage_records(usage_log, before, wait_for=1)
    assert record["status"] == "aborted" and record["streamed"]
    assert 0 < record["completion_tokens"] < 400


# -- providers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "scripted", "status", "code", "retry"),
    [
        (
            "gemini",
            {"status": 400, "message": "Invalid JSON payload received."},
            400,
            "invalid_argument",
            "false",
        ),
        ("gemini", {"status": 429, "retry_after": 30}, 429, "rate_limit_exceeded", "true"),
        ("xai", {"status": 400, "message": "bad"}, 400, "invalid_argument", "false"),
        (
            "plamo",
            {"status": 400, "message": "missing key in request header"},
            502,
            "upstream_unauthorized",
            "false",
        ),
        ("plamo", {"status": 500, "message": "oops"}, 500, "server_error", "true"),
        (
            "lmstudio",
            {"status": 200, "message": "Unexpected endpoint or method. (POST /x)"},
            404,
            "not_found",
            "false",
        ),
        (
            "llama-server",
            {
                "status": 400,
                "type": "exceed_context_size_error",
                "message": "the request exceeds the available context size",
            },
            400,
            "context_length_exceeded",
            "false",
        ),
        (
            "llama-server",
            {"status": 503, "type": "unavailable_error", "message": "Loading model"},
            503,
            "service_unavailable",
            "true",
        ),
        ("vllm", {"status": 400, "message": "bad temperature"}, 400, "invalid_request", "false"),
        (
            "ollama",
            {"status": 404, "message": 'model "x" not found, try pulling it first'},
            404,
            "model_not_found",
            "false",
        ),
        (
            "openai-html",
            {"status": 502, "shape": "html", "message": "Bad Gateway"},
            502,
            "bad_gateway",
            "true",
        ),
    ],
)
def test_errors_are_normalized_per_preset(
    gateway: ServerProcess,
    upstreams: dict[str, RunningProcess],
    provider: str,
    scripted: dict[str, Any],
    status: int,
    code: str,
    retry: str,
) -> None:
    shape = "html" if provider == "openai-html" else provider
    model = "alpha-html" if provider == "openai-html" else f"{provider}-model"
    target = upstreams["alpha"] if provider == "openai-html" else upstreams["errs"]
    times = 3 if retry == "true" and "retry_after" not in scripted else 1
    fault(target, {**scripted, "shape": shape, "times": times})
    response = post(gateway, chat_body(model))
    assert response.status_code == status, response.text
    error = check_response(response).json["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers["x-should-retry"] == retry


def test_a_parameter_the_provider_refuses_is_a_400_unless_dropped(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess]
) -> None:
    refused = post(gateway, chat_body("grok-4", presence_penalty=0.5))
    assert refused.status_code == 400
    error = check_response(refused).json["error"]
    assert (error["param"], error["code"]) == ("presence_penalty", "unsupported_parameter")
    assert stats(upstreams["errs"])["requests"] == 0
    dropped = post(gateway, chat_body("grok-4", stop=["\n"]))
    assert dropped.status_code == 200, dropped.text
    assert dropped.headers["x-kakehashi-dropped-params"] == "stop"
    [received] = stats(upstreams["errs"])["bodies"]
    assert "stop" not in received
    non_reasoning = post(gateway, chat_body("grok-4-fast-non-reasoning", presence_penalty=0.5))
    assert non_reasoning.status_code == 200
    gemini = post(gateway, chat_body("gemini-2.5-flash", web_search_options={}))
    assert gemini.status_code == 400
    assert check_response(gemini).json["error"]["param"] == "web_search_options"


def test_embeddings_and_completions_go_upstream(
    sdk: openai.OpenAI, upstreams: dict[str, RunningProcess]
) -> None:
    vectors = sdk.embeddings.create(model="alpha-embed", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1] and vectors.model == "alpha-embed"
    done = sdk.completions.create(model="alpha-text", prompt="once", max_tokens=4)
    assert done.choices[0].text.startswith("hello from alpha")
    streamed = sdk.completions.create(model="alpha-text", prompt="once", stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices).startswith("hello")


def test_an_upstream_that_cannot_be_reached_or_does_not_answer_is_a_502_or_504(
    gateway: ServerProcess, upstreams: dict[str, RunningProcess]
) -> None:
    dead = post(gateway, chat_body("dead-model"))
    assert dead.status_code == 502, dead.text
    error = check_response(dead).json["error"]
    assert "Cannot reach the upstream `dead`" in error["message"]
    assert dead.headers["x-should-retry"] == "true"
    fault(upstreams["errs"], {"hang": 2, "times": 3})
    sleepy = post(gateway, chat_body("sleepy-model", stream=True))
    assert sleepy.status_code == 504, sleepy.text
    error = check_response(sleepy).json["error"]
    assert "The upstream `sleepy` did not answer in time" in error["message"]
    assert stats(upstreams["errs"])["requests"] == 3  # tried, then retried twice
