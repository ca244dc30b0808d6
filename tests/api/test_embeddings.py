"""``POST /v1/embeddings`` in-process, on the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.helpers import expect_error
from kakehashi.api.app import create_app
from kakehashi.backends.embedding import Batcher, LocalEmbeddingBackend
from kakehashi.backends.fake import FakeBackend
from kakehashi.errors import ServiceUnavailableError
from kakehashi.settings import ModelSpec, Settings
from support.openapi import validate

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embedder() -> LocalEmbeddingBackend:
    backend = LocalEmbeddingBackend.from_settings(Settings())
    if backend is None:
        pytest.fail("the packaged embedding model (the `embeddings` extra) is not installed")
    return backend


def _settings() -> Settings:
    # A second public id whose `dimensions` may shorten vectors, as text-embedding-3 models do.
    return Settings(models=[ModelSpec(id="text-embedding-3-small", serves=MODEL, dimensions=True)])


@pytest.fixture(scope="module")
def client(embedder: LocalEmbeddingBackend) -> Iterator[TestClient]:
    app = create_app(_settings(), backends=[FakeBackend(), embedder])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as test_client:
        yield test_client


def embed(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    if body.get("encoding_format") == "base64":
        assert all(isinstance(item["embedding"], str) for item in data["data"])
        decoded = [
            {**item, "embedding": decode(item["embedding"]).tolist()} for item in data["data"]
        ]
        validate("CreateEmbeddingResponse", {**data, "data": decoded})
    else:
        validate("CreateEmbeddingResponse", data)
    return data


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def vectors(data: dict[str, Any]) -> np.ndarray:
    return np.array([item["embedding"] for item in data["data"]], dtype=np.float32)


def test_every_input_form(client: TestClient) -> None:
    one = embed(client, input="The bridge spans the river.")
    assert one["object"] == "list" and one["model"] == MODEL
    assert [item["index"] for item in one["data"]] == [0]
    assert len(one["data"][0]["embedding"]) == 384
    tokens = one["usage"]["prompt_tokens"]
    assert tokens > 0 and one["usage"]["total_tokens"] == tokens

    texts = ["The bridge spans the river.", "A cat sleeps."]
    many = embed(client, input=texts)
    assert [item["index"] for item in many["data"]] == [0, 1]
    np.testing.assert_allclose(vectors(many)[0], vectors(one)[0], atol=1e-5)
    assert many["usage"]["prompt_tokens"] > tokens

    # Token ids (what tokenizing the text gives) embed exactly like the text.
    ids = embedder_ids(client, texts)
    from_ids = embed(client, input=ids)
    np.testing.assert_allclose(vectors(from_ids), vectors(many), atol=1e-5)
    assert from_ids["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    single = embed(client, input=ids[0])
    np.testing.assert_allclose(vectors(single)[0], vectors(one)[0], atol=1e-5)


def embedder_ids(client: TestClient, texts: list[str]) -> list[list[int]]:
    backend = client.app.state.service.catalog.get(MODEL).backend  # type: ignore[attr-defined]
    return backend.model.tokenize(texts)


def test_float_equals_decoded_base64(client: TestClient) -> None:
    texts = ["kakehashi means bridge", "embeddings as little-endian float32"]
    as_float = vectors(embed(client, input=texts, encoding_format="float"))
    as_base64 = np.stack(
        [
            decode(i["embedding"])
            for i in embed(client, input=texts, encoding_format="base64")["data"]
        ]
    )
    assert as_base64.dtype == np.float32
    np.testing.assert_array_equal(as_float, as_base64)


def test_similarity_is_meaningful(client: TestClient) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone strums a guitar and sings.",
        "The stock market fell sharply today.",
    ]
    v = vectors(embed(client, input=texts))
    norms = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # normalized: cosine is a dot product
    cosine = v @ v.T
    np.testing.assert_allclose(np.diag(cosine), 1.0, atol=1e-5)
    assert cosine[0, 1] > 0.5 > cosine[0, 2]
    assert cosine[0, 1] > cosine[0, 2] + 0.3 and cosine[1, 0] > cosine[1, 2] + 0.3


def test_alias_answers_with_its_own_name(client: TestClient) -> None:
    data = embed(client, model="text-embedding-ada-002", input="hello")
    assert data["model"] == "text-embedding-ada-002"
    np.testing.assert_allclose(vectors(data), vectors(embed(client, input="hello")), atol=1e-6)


def test_dimensions(client: TestClient) -> None:
    error = expect_error(
        client.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 8}), 400
    )
    assert error["param"] == "dimensions"
    assert "does not support specifying dimensions" in error["message"]

    full = vectors(embed(client, model="text-embedding-3-small", input="a short text"))[0]
    short = vectors(
        embed(client, model="text-embedding-3-small", input="a short text", dimensions=64)
    )[0]
    assert short.shape == (64,)
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, atol=1e-5)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)
    too_many = client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x", "dimensions": 385}
    )
    assert expect_error(too_many, 400)["param"] == "dimensions"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty array"),
        ({"input": ["ok", ""]}, "input", "input 1 is an empty string"),
        ({"input": [[1, 2], []]}, "input", "input 1 is an empty array"),
        ({"input": ["x"] * 2049}, "input", "maximum length 2048"),
        ({"input": 42}, "input", "expected a string, an array of strings"),
        ({"input": ["a", 1]}, "input", "expected a string"),
        ({"input": [True]}, "input", "expected a string"),
        ({"input": [-1, 5]}, "input", "negative token id"),
        ({"input": [[30522]]}, "input", "vocabulary has 30522 tokens"),
        ({"input": "word " * 300}, "input", "maximum input length is 254 tokens"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "Supported values"),
        ({"input": "x", "dimensions": 0}, "dimensions", "below minimum"),
        ({"input": "x", "dimensions": "8"}, "dimensions", "expected an integer"),
        ({"input": "x", "model": 3}, "model", "expected a string"),
        ({}, "input", "Missing required parameter"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    client: TestClient, body: dict[str, Any], param: str, fragment: str
) -> None:
    error = expect_error(client.post("/v1/embeddings", json={"model": MODEL, **body}), 400)
    assert error["param"] == param
    assert fragment in error["message"]


def test_wrong_model_kinds(client: TestClient) -> None:
    error = expect_error(client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert error["code"] == "model_not_found"
    error = expect_error(
        client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"}), 404
    )
    assert "does not support the v1/embeddings endpoint" in error["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    error = expect_error(client.post("/v1/chat/completions", json=chat), 404)
    assert error["message"].startswith("This is not a chat model")


def test_a_list_of_100_is_one_forward_pass(
    client: TestClient, embedder: LocalEmbeddingBackend
) -> None:
    before = embedder.batcher.passes
    data = embed(client, input=[f"sentence number {i}" for i in range(100)])
    assert len(data["data"]) == 100
    assert embedder.batcher.passes == before + 1


def test_concurrent_requests_are_coalesced(
    client: TestClient, embedder: LocalEmbeddingBackend
) -> None:
    bodies = [
        {"model": MODEL, "input": [f"request {i} text {j}" for j in range(5)]} for i in range(24)
    ]
    before = embedder.batcher.passes
    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(lambda b: client.post("/v1/embeddings", json=b), bodies))
    passes = embedder.batcher.passes - before
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        expected = vectors(embed(client, input=[f"request {i} text 0"]))[0]
        np.testing.assert_allclose(vectors(response.json())[0], expected, atol=1e-5)
    assert passes < len(bodies)  # requests that arrived during a pass shared the next one


def test_batcher_coalesces_waiting_calls_and_fails_them_on_stop() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def embed(batch: list[list[int]]) -> list[int]:
        calls.append(len(batch))
        assert gate.wait(10)
        return [sum(ids) for ids in batch]

    async def scenario() -> None:
        batcher = Batcher(embed, max_inputs=5)
        batcher.start()
        first = asyncio.create_task(batcher.submit([[1]]))
        await asyncio.sleep(0.05)  # the first pass is running, blocked on the gate
        waiting = [asyncio.create_task(batcher.submit([[i], [i, i]])) for i in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await first == [1]
        assert [await w for w in waiting] == [[i, 2 * i] for i in range(3)]
        assert calls == [1, 4, 2]  # two calls fit the 5-input limit of one pass, one did not

        gate.clear()
        running = asyncio.create_task(batcher.submit([[5]]))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit([[6]]))
        await asyncio.sleep(0.01)
        await batcher.stop()
        gate.set()
        for task in (running, queued):
            with pytest.raises(ServiceUnavailableError):
                await task

    asyncio.run(scenario())
