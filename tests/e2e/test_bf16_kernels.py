"""A bfloat16 model served end to end through kakehashi's own CPU kernels (where they run):
single sequences, n > 1 and concurrent requests decode as decode batches, and streams equal
whole responses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from kakehashi.engine import kernels
from support.contract import check_response, sdk_http_client
from support.server import ServerProcess, run_server

pytestmark = pytest.mark.skipif(
    not kernels.cpu_supports_bf16_kernels(), reason="no AVX-512 BF16 on this CPU"
)
MODEL = "tiny-bf16"


@pytest.fixture(scope="module")
def bf16_server(
    tmp_path_factory: pytest.TempPathFactory, server_data_dir: Path
) -> Iterator[ServerProcess]:
    from kakehashi.engine.models.tiny import make_tiny_model

    model_dir = make_tiny_model(
        tmp_path_factory.mktemp("tiny-bf16"),
        arch="llama",
        hidden_size=128,
        num_heads=2,
        num_kv_heads=1,  # head size 64, as real models have
        intermediate_size=256,
        dtype="bfloat16",
    )
    with run_server(
        model_dir,
        data_dir=server_data_dir,
        served_model_name=MODEL,
        max_model_len=1024,
        extra_args=["--no-embeddings"],
        startup_timeout=240,  # may compile the kernels first
    ) as server:
        yield server


@pytest.fixture()
def client(bf16_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=bf16_server.base_url, api_key="none", http_client=sdk_http_client()
    ) as sdk:
        yield sdk


def test_the_server_decodes_through_the_kernels(bf16_server: ServerProcess) -> None:
    assert "CPU kernels on" in bf16_server.output()


def test_n_choices_decode_together_and_agree(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about bridges."}],
        n=3,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    check_response(raw.http_response)
    res = raw.parse()
    assert len(res.choices) == 3
    texts = {c.message.content for c in res.choices}
    assert len(texts) == 1  # the same greedy decode, three rows of one batch
    for choice in res.choices:
        assert choice.logprobs is not None
        entries = choice.logprobs.content
        assert len(entries) == res.usage.completion_tokens // 3
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
        assert all(e.logprob >= e.top_logprobs[0].logprob - 0.1 for e in entries)  # greedy


def test_stream_equals_the_whole_response(client: openai.OpenAI) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count the rivers."}],
        "max_tokens": 32,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**body)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**body, stream=True)
        if chunk.choices
    )
    assert streamed == whole.choices[0].message.content
    assert whole.usage.completion_tokens > 0


def test_concurrent_requests_all_complete(client: openai.OpenAI) -> None:
    results: dict[int, int] = {}

    def ask(i: int) -> None:
        res = client.completions.create(
            model=MODEL, prompt=f"Story number {i}:", max_tokens=20, temperature=0.7, seed=i
        )
        results[i] = res.usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 8
    assert all(0 < n <= 20 for n in results.values())
