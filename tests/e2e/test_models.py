"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

import httpx
import openai
import pytest

from e2e.common import LLAMA_ALIAS, LLAMA_MODEL, MESSAGES
from support.contract import check_response
from support.server import ServerProcess


def test_list_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [model.id for model in models]
    assert LLAMA_MODEL in ids and LLAMA_ALIAS in ids
    assert len(ids) == len(set(ids))
    for model in models:
        assert model.object == "model"
        assert isinstance(model.created, int) and model.owned_by


@pytest.mark.parametrize("model_id", [LLAMA_MODEL, LLAMA_ALIAS])
def test_retrieve_model(client: openai.OpenAI, model_id: str) -> None:
    model = client.models.retrieve(model_id)
    assert model.id == model_id
    assert model.object == "model"


def test_unknown_model_is_404(client: openai.OpenAI, llama_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"

    response = httpx.get(
        f"{llama_server.base_url}/models/no-such-model", headers=llama_server.auth_headers()
    )
    assert response.status_code == 404
    error = check_response(response).json["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == (
        "The model `no-such-model` does not exist or you do not have access to it."
    )


def test_alias_serves_the_same_model(client: openai.OpenAI) -> None:
    by_name = client.chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, temperature=0, max_tokens=6
    )
    by_alias = client.chat.completions.create(
        model=LLAMA_ALIAS, messages=MESSAGES, temperature=0, max_tokens=6
    )
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    assert by_alias.model in (LLAMA_ALIAS, LLAMA_MODEL)
