"""A tiny Qwen2 served without an API key: the open server, its template, its stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from e2e.common import MESSAGES, TinyTokenizer, hf_chat_prompt_tokens, sdk_client
from support.contract import check_response
from support.server import ServerProcess, run_server


@pytest.fixture(scope="module")
def qwen_server(tiny_qwen2_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    with run_server(tiny_qwen2_dir, data_dir=server_data_dir, max_model_len=512) as server:
        yield server


@pytest.fixture(scope="module")
def qwen_client(qwen_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with sdk_client(qwen_server) as sdk:
        yield sdk


def test_served_under_the_directory_name(qwen_client: openai.OpenAI, tiny_qwen2_dir: Path) -> None:
    ids = [model.id for model in qwen_client.models.list()]
    assert tiny_qwen2_dir.name in ids
    assert qwen_client.models.retrieve(tiny_qwen2_dir.name).id == tiny_qwen2_dir.name


def test_open_server_needs_no_key(qwen_server: ServerProcess, tiny_qwen2_dir: Path) -> None:
    response = requests.post(
        f"{qwen_server.base_url}/chat/completions",
        json={"model": tiny_qwen2_dir.name, "messages": MESSAGES, "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    check_response(response)


@pytest.mark.parametrize(
    "messages",
    [
        MESSAGES,
        [{"role": "user", "content": "No system message here."}],  # the template adds a default
        [*MESSAGES, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Go"}],
    ],
    ids=["system", "default-system", "multi-turn"],
)
def test_chat_template_matches_transformers(
    qwen_client: openai.OpenAI, tiny_qwen2_dir: Path, messages: list[dict[str, str]]
) -> None:
    res = qwen_client.chat.completions.create(
        model=tiny_qwen2_dir.name, messages=messages, temperature=0, max_tokens=4
    )
    assert res.usage.prompt_tokens == hf_chat_prompt_tokens(tiny_qwen2_dir, messages)


def test_stream_equals_whole(qwen_client: openai.OpenAI, tiny_qwen2_dir: Path) -> None:
    params = {
        "model": tiny_qwen2_dir.name,
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 16,
    }
    whole = qwen_client.chat.completions.create(**params)
    chunks = list(qwen_client.chat.completions.create(stream=True, **params))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_completion_with_logprobs(qwen_client: openai.OpenAI, tiny_qwen2_dir: Path) -> None:
    prompt = "The bridge over the river"
    res = qwen_client.completions.create(
        model=tiny_qwen2_dir.name, prompt=prompt, temperature=0, max_tokens=8, logprobs=3
    )
    assert res.usage.prompt_tokens == len(TinyTokenizer(tiny_qwen2_dir).encode(prompt))
    logprobs = res.choices[0].logprobs
    assert len(logprobs.tokens) == res.usage.completion_tokens == 8
    assert all(len(top) <= 4 for top in logprobs.top_logprobs)
