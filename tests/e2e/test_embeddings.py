"""``POST /v1/embeddings`` on a real server: the packaged all-MiniLM-L6-v2, served by default
as itself and as ``text-embedding-ada-002``, driven by the official SDK, raw HTTP and
openai 0.28."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from e2e.common import API_KEY
from support.legacy_sdk import ensure_legacy_openai, run_snippet
from support.openapi import validate
from support.server import ServerProcess

ADA = "text-embedding-ada-002"
MINILM = "all-MiniLM-L6-v2"
TEXTS = [
    "How do I cross the river?",
    "Where is the bridge over the river?",
    "My favourite dessert is chocolate cake.",
]


def post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/embeddings", json=body, headers=server.auth_headers(), timeout=60
    )


def test_listed_by_default(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert MINILM in ids and ADA in ids


def test_sdk_float_and_base64_agree(client: openai.OpenAI) -> None:
    as_float = client.embeddings.create(model=ADA, input=TEXTS, encoding_format="float")
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    default = client.embeddings.create(model=ADA, input=TEXTS)
    assert as_float.model == ADA and len(as_float.data) == 3
    assert [d.index for d in as_float.data] == [0, 1, 2]
    for a, b in zip(as_float.data, default.data, strict=True):
        assert len(a.embedding) == 384
        np.testing.assert_array_equal(np.float32(a.embedding), np.float32(b.embedding))
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 3


def test_raw_http_validates_and_similarity_is_real(llama_server: ServerProcess) -> None:
    floats = post(llama_server, {"model": MINILM, "input": TEXTS})
    assert floats.status_code == 200
    validate("CreateEmbeddingResponse", floats.json())
    encoded = post(llama_server, {"model": MINILM, "input": TEXTS, "encoding_format": "base64"})
    raw = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in encoded.json()["data"]]
    vectors = np.array([d["embedding"] for d in floats.json()["data"]], dtype=np.float32)
    np.testing.assert_array_equal(vectors, np.stack(raw))
    cosine = vectors @ vectors.T
    np.testing.assert_allclose(np.diag(cosine), 1.0, atol=1e-5)
    assert cosine[0, 1] > cosine[0, 2] + 0.2 and cosine[1, 0] > cosine[1, 2] + 0.2


def test_errors_through_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=ADA, input="x", dimensions=256)
    assert caught.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=ADA, input=["bridge " * 400])
    assert caught.value.param == "input" and caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=ADA, input=[])
    assert caught.value.param == "input"
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-similarity-ada-001", input="x")  # retired 2024-01-04
    assert "use `text-embedding-ada-002` instead" in caught.value.message


@pytest.fixture(scope="module")
def legacy_openai() -> Path:
    return ensure_legacy_openai()


def test_openai_028_embedding_create(legacy_openai: Path, llama_server: ServerProcess) -> None:
    code = """
import openai
openai.api_base = BASE
openai.api_key = KEY
response = openai.Embedding.create(model=MODEL, input=TEXTS)
result = {"vectors": [d["embedding"] for d in response["data"]], "usage": response["usage"]}
"""
    result = run_snippet(
        legacy_openai,
        code,
        variables={"BASE": llama_server.base_url, "KEY": API_KEY, "MODEL": ADA, "TEXTS": TEXTS},
    )
    modern = post(llama_server, {"model": ADA, "input": TEXTS}).json()
    np.testing.assert_allclose(
        np.float32(result["vectors"]),
        np.float32([d["embedding"] for d in modern["data"]]),
        atol=1e-6,
    )
    assert result["usage"] == modern["usage"]
