"""Settings every kakehashi test directory shares.

Being here also puts ``tests/`` on ``sys.path``, so test modules import helpers as
``from support.openapi import validate``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_kakehashi_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read the developer's ``KAKEHASHI_*`` settings nor write to their data dir."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("KAKEHASHI_") or k == "OPENAI_API_KEY"]:
            patch.delenv(name)
        patch.setenv("KAKEHASHI_DATA_DIR", str(tmp_path_factory.mktemp("kakehashi-data")))
        yield
