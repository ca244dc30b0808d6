"""Property-based requests from OpenAI's OpenAPI spec, sent to a real server.

Schemathesis turns every operation of the paths kakehashi implements (chat completions,
completions, embeddings, models) into Hypothesis strategies, in both its modes: bodies the
schema allows and bodies it does not (wrong types, missing fields, out-of-range values, odd
headers). Half the cases are retargeted to a model the server serves, so they reach the
backends rather than stopping at a 404; generation lengths are capped to keep runs short.

:func:`check_answer` states the property: no 5xx, an OpenAI error envelope on every 4xx, and a
schema-valid body (or stream) on every 2xx of the OpenAI surface.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core import NotSet

from support.contract import check_response
from support.openapi import _document, validate

__all__ = ["FuzzTally", "case_strategy", "check_answer", "send"]

FUZZ_PATHS = r"^/(chat/completions|completions|embeddings|models)$|^/models/\{model\}$"
MAX_GENERATED_TOKENS = 16
MAX_CHOICES = 4
_SKIPPED_HEADERS = frozenset(
    {"authorization", "content-length", "content-type", "host", "transfer-encoding", "connection"}
)


@functools.cache
def _schema() -> Any:
    # YAML reads some examples as dates; the schema wants JSON values.
    document = json.loads(json.dumps(_document(), default=str))
    return schemathesis.openapi.from_dict(document).include(path_regex=FUZZ_PATHS)


def _retarget(case: Case, model: str | None) -> Case:
    """Point the case at ``model`` (when given) and cap how much it may generate."""
    body = case.body
    if isinstance(body, dict):
        if model is not None:
            body["model"] = model
        for key, cap in (
            ("max_tokens", MAX_GENERATED_TOKENS),
            ("max_completion_tokens", MAX_GENERATED_TOKENS),
            ("n", MAX_CHOICES),
            ("best_of", MAX_CHOICES),
        ):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                body[key] = cap
    if model is not None and "model" in (case.path_parameters or {}):
        case.path_parameters["model"] = model
    return case


def case_strategy(models: Sequence[str]) -> st.SearchStrategy[Case]:
    """Cases of every operation on the fuzzed paths, valid and invalid, half of them aimed
    at one of ``models``."""
    operations = [result.ok() for result in _schema().get_all_operations()]
    cases = st.one_of(
        [
            operation.as_strategy(generation_mode=mode)
            for operation in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    )
    targets = st.one_of(st.none(), st.sampled_from(list(models)))
    return st.builds(_retarget, cases, targets)


def _printable(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable()


def send(client: httpx.Client, case: Case) -> httpx.Response:
    """Send ``case`` as JSON (or without a body); the response is read whole."""
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if _printable(name) and name and _printable(value) and name.lower() not in _SKIPPED_HEADERS
    }
    content = None
    if isinstance(case.body, bytes):  # a raw body, as the negative mode sometimes sends
        content = case.body
        headers["Content-Type"] = "application/json"
    elif not isinstance(case.body, NotSet):
        content = json.dumps(case.body).encode()
        headers["Content-Type"] = "application/json"
    query = {
        k: v for k, v in (case.query or {}).items() if _printable(k) and isinstance(v, str | int)
    }
    return client.request(
        case.method.upper(),
        case.formatted_path.lstrip("/"),
        headers=headers,
        params=query,
        content=content,
    )


def check_answer(response: httpx.Response) -> None:
    """The property every answer must have (raises AssertionError)."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:1000]}"
    if status >= 400:
        body = response.json()
        validate("ErrorResponse", body)
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"], body
    elif response.request.method in ("GET", "POST"):
        check_response(response)


class FuzzTally(Counter[str]):
    """How many answers had each status class (``2xx``, ``4xx``, ``5xx``) and status."""

    def record(self, response: httpx.Response) -> None:
        status = response.status_code
        self[f"{status // 100}xx"] += 1
        self[str(status)] += 1

    @property
    def sent(self) -> int:
        return sum(count for key, count in self.items() if key.endswith("xx"))
