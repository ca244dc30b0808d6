"""POST /tokenize and /detokenize: vLLM's shapes, exact on a local model, estimated where the
backend cannot tokenize; auth, model access and bad input as on every other route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from fastapi.testclient import TestClient

from api.helpers import API_KEY, expect_error
from kakehashi.api.app import create_app
from kakehashi.backends.base import ServedModel, served_as
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend, FakeTokenizer
from kakehashi.settings import Settings
from kakehashi.wire.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from kakehashi.wire.completions import CompletionRequest, CompletionResponse

UPSTREAM_MODEL = "upstream-model"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]


class NoTokenizerBackend:
    """A generative backend without a tokenizer, as an upstream provider is: it answers
    through the fake, but offers no ``tokenize``."""

    def __init__(self, model_id: str) -> None:
        self._inner = FakeBackend((model_id,))
        self._served = served_as([model_id], owned_by="upstream")

    def served_models(self) -> Sequence[ServedModel]:
        return self._served

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        return await self._inner.chat_completion(request)

    def stream_chat_completion(
        self, request: ChatCompletionRequest
    ) -> AsyncIterator[ChatCompletionChunk]:
        return self._inner.stream_chat_completion(request)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        return await self._inner.completion(request)

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        return self._inner.stream_completion(request)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(
        api_keys=[API_KEY, "sk-free-tier-0000:free"],
        models=[{"id": "paid-only", "serves": FAKE_MODEL_ID, "min_tier": "tier-1"}],
    )
    backends = [FakeBackend(max_model_len=777), NoTokenizerBackend(UPSTREAM_MODEL)]
    with TestClient(create_app(settings, backends=backends), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {API_KEY}"
        yield c


def test_prompt_is_tokenized_exactly(client: TestClient) -> None:
    for path in ("/tokenize", "/v1/tokenize"):
        body = client.post(path, json={"model": FAKE_MODEL_ID, "prompt": "héllo"}).json()
        ids = [FakeTokenizer.BOS, *"héllo".encode()]
        assert body == {"count": len(ids), "max_model_len": 777, "tokens": ids, "exact": True}
    plain = client.post(
        "/tokenize", json={"model": FAKE_MODEL_ID, "prompt": "hi", "add_special_tokens": False}
    ).json()
    assert plain["tokens"] == list(b"hi")


def test_messages_count_as_the_chat_endpoint_counts_them(client: TestClient) -> None:
    counted = client.post("/tokenize", json={"model": FAKE_MODEL_ID, "messages": MESSAGES}).json()
    chat = client.post(
        "/v1/chat/completions",
        json={"model": FAKE_MODEL_ID, "messages": MESSAGES, "max_tokens": 1},
    ).json()
    assert counted["exact"] is True
    assert counted["count"] == chat["usage"]["prompt_tokens"]
    rendered = "system: Be brief.\nuser: héllo\nassistant:"
    assert counted["tokens"] == list(rendered.encode())
    no_reply = client.post(
        "/tokenize",
        json={"model": FAKE_MODEL_ID, "messages": MESSAGES, "add_generation_prompt": False},
    ).json()
    assert no_reply["count"] == counted["count"] - len(b"assistant:")


def test_detokenize_round_trips(client: TestClient) -> None:
    ids = client.post("/tokenize", json={"model": FAKE_MODEL_ID, "prompt": "日本"}).json()["tokens"]
    for path in ("/detokenize", "/v1/detokenize"):
        body = client.post(path, json={"model": FAKE_MODEL_ID, "tokens": ids}).json()
        assert body == {"prompt": "<|begin|>日本"}


def test_upstream_without_tokenizer_gets_an_estimate(client: TestClient) -> None:
    body = client.post("/tokenize", json={"model": UPSTREAM_MODEL, "prompt": "a" * 30}).json()
    assert body == {"count": 10, "max_model_len": None, "tokens": None, "exact": False}
    chat = client.post("/tokenize", json={"model": UPSTREAM_MODEL, "messages": MESSAGES}).json()
    assert chat["exact"] is False and chat["count"] > 0
    error = expect_error(
        client.post("/detokenize", json={"model": UPSTREAM_MODEL, "tokens": [1, 2]}), 400
    )
    assert error["param"] == "model" and "cannot detokenize" in error["message"]


def test_model_cards_carry_the_context_window(client: TestClient) -> None:
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards[FAKE_MODEL_ID]["context_window"] == 777
    assert cards[FAKE_MODEL_ID]["max_model_len"] == 777
    assert "context_window" not in cards[UPSTREAM_MODEL]


def test_auth_and_model_access(client: TestClient) -> None:
    body = {"model": FAKE_MODEL_ID, "prompt": "hi"}
    error = expect_error(client.post("/tokenize", json=body, headers={"Authorization": ""}), 401)
    assert error["code"] == "invalid_api_key"
    free = {"Authorization": "Bearer sk-free-tier-0000"}
    assert client.post("/tokenize", json={**body, "model": "paid-only"}).status_code == 200
    error = expect_error(
        client.post("/tokenize", json={**body, "model": "paid-only"}, headers=free), 404
    )
    assert error["code"] == "model_not_found"
    error = expect_error(client.post("/detokenize", json={"model": "nope", "tokens": [1]}), 404)
    assert error["code"] == "model_not_found" and error["param"] is None  # as OpenAI sends it


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/tokenize", {"model": FAKE_MODEL_ID}, "messages", "exactly one of 'prompt'"),
        (
            "/tokenize",
            {"model": FAKE_MODEL_ID, "prompt": "a", "messages": MESSAGES},
            "messages",
            "exactly one of 'prompt'",
        ),
        ("/tokenize", {"prompt": "a"}, "model", "Missing required parameter"),
        ("/tokenize", {"model": FAKE_MODEL_ID, "prompt": 5}, "prompt", "string"),
        ("/tokenize", {"model": FAKE_MODEL_ID, "messages": []}, "messages", ""),
        (
            "/tokenize",
            {"model": FAKE_MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "",
        ),
        ("/detokenize", {"model": FAKE_MODEL_ID}, "tokens", "Missing required parameter"),
        ("/detokenize", {"model": FAKE_MODEL_ID, "tokens": "12"}, "tokens", "array"),
        ("/detokenize", {"model": FAKE_MODEL_ID, "tokens": [-1]}, "tokens[0]", ""),
        ("/detokenize", {"model": FAKE_MODEL_ID, "tokens": [99999]}, "tokens", "vocabulary"),
    ],
)
def test_bad_input(client: TestClient, path: str, body: dict, param: str, words: str) -> None:
    error = expect_error(client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_body_that_is_not_json(client: TestClient) -> None:
    response = client.post("/tokenize", content=b"{not json", headers={"Content-Type": "x"})
    assert "could not parse the JSON body" in expect_error(response, 400)["message"]
