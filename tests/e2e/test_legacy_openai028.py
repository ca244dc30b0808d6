"""The old ``openai==0.28.1`` SDK, unchanged apart from ``api_base`` and ``api_key``.

It runs in its own ``pip --target`` directory (see ``support.legacy_sdk``); every body it
receives is handed back as JSON and validated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.common import API_KEY, LLAMA_MODEL, MESSAGES
from support.contract import validate_chunk
from support.legacy_sdk import ensure_legacy_openai, run_snippet
from support.openapi import validate
from support.server import ServerProcess

PROMPT = "The bridge over the river"

SETUP = """
import openai
openai.api_base = BASE
openai.api_key = KEY
"""


@pytest.fixture(scope="module")
def legacy_openai() -> Path:
    return ensure_legacy_openai()


@pytest.fixture(scope="module")
def run028(legacy_openai: Path, llama_server: ServerProcess) -> Any:
    def run(code: str, **variables: Any) -> Any:
        return run_snippet(
            legacy_openai,
            SETUP + code,
            variables={"BASE": llama_server.base_url, "KEY": API_KEY, **variables},
        )

    return run


def test_chat_completion(run028: Any, client: openai.OpenAI) -> None:
    result = run028(
        """
result = openai.ChatCompletion.create(
    model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10)
""",
        MODEL=LLAMA_MODEL,
        MESSAGES=MESSAGES,
    )
    validate("CreateChatCompletionResponse", result)
    modern = client.chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, temperature=0, max_tokens=10
    )
    assert result["choices"][0]["message"]["content"] == modern.choices[0].message.content
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert result["usage"][field] == getattr(modern.usage, field)


def test_chat_completion_stream(run028: Any, client: openai.OpenAI) -> None:
    chunks = run028(
        """
result = list(openai.ChatCompletion.create(
    model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10, stream=True))
""",
        MODEL=LLAMA_MODEL,
        MESSAGES=MESSAGES,
    )
    for chunk in chunks:
        validate_chunk("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    modern = client.chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, temperature=0, max_tokens=10
    )
    assert text == modern.choices[0].message.content
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.parametrize("how", ["engine", "model"])
def test_completion(run028: Any, client: openai.OpenAI, how: str) -> None:
    result = run028(
        f"""
result = openai.Completion.create({how}=MODEL, prompt=PROMPT, temperature=0, max_tokens=10)
""",
        MODEL=LLAMA_MODEL,
        PROMPT=PROMPT,
    )
    validate("CreateCompletionResponse", result)
    modern = client.completions.create(
        model=LLAMA_MODEL, prompt=PROMPT, temperature=0, max_tokens=10
    )
    assert result["choices"][0]["text"] == modern.choices[0].text


def test_completion_stream_with_engine(run028: Any, client: openai.OpenAI) -> None:
    chunks = run028(
        """
result = list(openai.Completion.create(
    engine=MODEL, prompt=PROMPT, temperature=0, max_tokens=10, stream=True))
""",
        MODEL=LLAMA_MODEL,
        PROMPT=PROMPT,
    )
    assert chunks
    for chunk in chunks:
        validate_chunk("CreateCompletionResponse", chunk)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    modern = client.completions.create(
        model=LLAMA_MODEL, prompt=PROMPT, temperature=0, max_tokens=10
    )
    assert text == modern.choices[0].text


def test_model_list(run028: Any) -> None:
    result = run028("result = openai.Model.list()")
    validate("ListModelsResponse", result)
    assert LLAMA_MODEL in [model["id"] for model in result["data"]]


def test_errors_map_to_028_exceptions(run028: Any) -> None:
    result = run028(
        """
result = {}
try:
    openai.ChatCompletion.create(model="gpt-unknown", messages=MESSAGES)
except openai.error.OpenAIError as exc:
    result["unknown_model"] = [type(exc).__name__, exc.http_status, exc.code, exc.json_body]
openai.api_key = "sk-wrong"
try:
    openai.ChatCompletion.create(model=MODEL, messages=MESSAGES)
except openai.error.OpenAIError as exc:
    result["bad_key"] = [type(exc).__name__, exc.http_status, exc.code, exc.json_body]
""",
        MODEL=LLAMA_MODEL,
        MESSAGES=MESSAGES,
    )
    name, status, code, body = result["unknown_model"]
    assert (name, status, code) == ("InvalidRequestError", 404, "model_not_found")
    validate("ErrorResponse", body)
    name, status, _, body = result["bad_key"]  # 0.28 does not copy `code` for a 401
    assert (name, status) == ("AuthenticationError", 401)
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "invalid_api_key"
