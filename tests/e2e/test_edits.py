"""``POST /v1/edits`` on a real server with the tiny Llama, as old code calls it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from e2e.common import API_KEY
from support.legacy_sdk import ensure_legacy_openai, run_snippet
from support.openapi import validate
from support.server import ServerProcess

BODY = {
    "model": "text-davinci-edit-001",
    "input": "What day of the wek is it?",
    "instruction": "Fix the spelling mistakes.",
    "temperature": 0,
}


def test_raw_http_returns_the_old_shape(llama_server: ServerProcess) -> None:
    response = httpx.post(
        f"{llama_server.base_url}/edits",
        json=BODY,
        headers=llama_server.auth_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateEditResponse", body)
    assert body["object"] == "edit" and len(body["choices"]) == 1
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["deprecation"].startswith("@")
    assert "successor-version" in response.headers["link"]
    again = httpx.post(
        f"{llama_server.base_url}/edits",
        json=BODY,
        headers=llama_server.auth_headers(),
        timeout=120,
    )
    assert again.json()["choices"] == body["choices"]  # temperature 0 is deterministic


@pytest.fixture(scope="module")
def legacy_openai() -> Path:
    return ensure_legacy_openai()


def test_openai_028_edit_create(legacy_openai: Path, llama_server: ServerProcess) -> None:
    code = """
import openai
openai.api_base = BASE
openai.api_key = KEY
result = openai.Edit.create(**BODY, n=2).to_dict_recursive()
"""
    result = run_snippet(
        legacy_openai, code, variables={"BASE": llama_server.base_url, "KEY": API_KEY, "BODY": BODY}
    )
    validate("CreateEditResponse", result)
    assert [c["index"] for c in result["choices"]] == [0, 1]
