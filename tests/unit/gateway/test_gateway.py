"""The catalog and the gateway service."""

from __future__ import annotations

import asyncio

import pytest

from kakehashi.backends.base import ServedModel
from kakehashi.backends.fake import FakeBackend
from kakehashi.errors import ConflictError, InvalidRequestError, ModelNotFoundError
from kakehashi.gateway.catalog import Catalog
from kakehashi.gateway.service import GatewayService
from kakehashi.wire.chat import ChatCompletionRequest


def test_catalog_resolves_every_public_id() -> None:
    first, second = FakeBackend(["a", "a-alias"]), FakeBackend(["org/b"])
    catalog = Catalog.from_backends([first, second])
    assert [e.id for e in catalog.entries()] == ["a", "a-alias", "org/b"]
    assert catalog.resolve("a-alias").backend is first
    assert catalog.resolve("org/b").backend is second
    assert catalog.backends() == [first, second]
    with pytest.raises(ModelNotFoundError) as caught:
        catalog.resolve("c")
    assert caught.value.status_code == 404
    assert caught.value.param is None  # OpenAI sends null
    assert caught.value.message == "The model `c` does not exist or you do not have access to it."


def test_catalog_rejects_duplicate_ids() -> None:
    catalog = Catalog.from_backends([FakeBackend(["a"])])
    with pytest.raises(ConflictError):
        catalog.add(ServedModel("a", 0), FakeBackend())


def test_service_checks_n_and_routes_by_model() -> None:
    backend = FakeBackend(["a"])
    service = GatewayService(Catalog.from_backends([backend]), max_n=2)
    assert [m.id for m in service.list_models().data] == ["a"]
    assert service.get_model("a").owned_by == "kakehashi-test"

    async def scenario() -> None:
        await service.start()
        assert backend.engine.started
        request = ChatCompletionRequest.model_validate(
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "n": 2, "max_tokens": 1}
        )
        response = await service.chat_completion(request)
        assert len(response.choices) == 2
        with pytest.raises(InvalidRequestError) as caught:
            await service.chat_completion(request.model_copy(update={"n": 3}))
        assert caught.value.param == "n"
        with pytest.raises(ModelNotFoundError):
            service.stream_chat_completion(request.model_copy(update={"model": "b"}))
        await service.stop()
        assert not backend.engine.started

    asyncio.run(scenario())
