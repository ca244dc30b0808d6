"""The OpenAI-compatibility tests again, through a gateway: a kakehashi with no model of its own
in front of the kakehashi that serves the tiny Llama (and the embedding model).

Every test of the imported modules runs here a second time with ``llama_server`` (and so
``client``) pointing at the gateway, so streams, logprobs, errors and the old SDK's paths must
come through an upstream hop unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.common import API_KEY, LLAMA_ALIAS, LLAMA_MODEL
from e2e.test_chat import *  # noqa: F403
from e2e.test_completions import *  # noqa: F403
from e2e.test_embeddings import *  # noqa: F403
from e2e.test_errors import *  # noqa: F403
from e2e.test_raw_http import *  # noqa: F403
from support.server import ServerProcess, run_server

UPSTREAM_KEY_ENV = "KAKEHASHI_TEST_UPSTREAM_KEY"


@pytest.fixture(scope="module")
def llama_server(
    llama_server: ServerProcess, server_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The gateway, standing in for the server it forwards to."""
    # "text-*" also sends the retired ids of OpenAI's migration table on, to be refused there.
    models = [LLAMA_MODEL, LLAMA_ALIAS, "all-MiniLM-L6-v2", "text-embedding-ada-002", "text-*"]
    config = tmp_path_factory.mktemp("through-gateway") / "gateway.toml"
    config.write_text(
        "[[upstreams]]\n"
        'name = "kakehashi"\n'
        f'base_url = "{llama_server.base_url}"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\n'
        f"models = {models!r}\n".replace("'", '"')
    )
    with run_server(
        None,
        data_dir=server_data_dir,
        served_model_name=None,
        api_keys=[API_KEY],
        extra_args=["--no-local-model", "--no-embeddings", "--config", str(config)],
        env={UPSTREAM_KEY_ENV: API_KEY},
    ) as gateway:
        gateway.model = LLAMA_MODEL
        yield gateway
