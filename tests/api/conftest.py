"""Fixtures of the API tests: the app in-process (TestClient, lifespan included) on the
FakeBackend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.helpers import make_client
from kakehashi.backends.fake import FAKE_MODEL_ID, FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(model_ids=(FAKE_MODEL_ID, "org/alias-model"))


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    with make_client(backend) as test_client:
        yield test_client
