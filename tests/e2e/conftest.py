"""Fixtures for end-to-end tests: tiny model directories, real server processes, clients.

``llama_server`` is one server for the whole session (starting one takes 10-20 s on two
cores): a tiny random-weight Llama served as ``tiny-llama`` (alias ``tiny-alias``) behind an
API key, with a 512-token context window. Tests must not change its state; a module that needs
other flags starts its own server with :func:`support.server.run_server`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import openai
import pytest

from e2e.common import API_KEY, LLAMA_ALIAS, LLAMA_MODEL, MAX_MODEL_LEN, TinyTokenizer, sdk_client
from support.server import ServerProcess, run_server


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KAKEHASHI_DATA_DIR of every server: never the user's home."""
    return tmp_path_factory.mktemp("server-data")


def _make_model(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    from kakehashi.engine.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint directory."""
    return _make_model(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 checkpoint directory."""
    return _make_model(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def llama_server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    """``kakehashi serve`` on the tiny Llama, with an API key and an alias."""
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        aliases=[LLAMA_ALIAS],
        api_keys=[API_KEY],
        max_model_len=MAX_MODEL_LEN,
    ) as server:
        yield server


OPEN_ALLOWED_HOST = "api.example.test"
OPEN_CORS_ORIGIN = "http://app.example.test"
OPEN_MAX_BODY = 256 * 1024


@pytest.fixture(scope="session")
def open_server(tiny_llama_dir: Path, server_data_dir: Path) -> Iterator[ServerProcess]:
    """The tiny Llama on a server without API keys: one extra allowed Host name, one CORS
    origin, a 256 KiB body limit."""
    with run_server(
        tiny_llama_dir,
        data_dir=server_data_dir,
        served_model_name=LLAMA_MODEL,
        max_model_len=MAX_MODEL_LEN,
        extra_args=[
            *("--allowed-host", OPEN_ALLOWED_HOST),
            *("--cors-origin", OPEN_CORS_ORIGIN),
            *("--max-body-size", "256KiB"),
        ],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(llama_server: ServerProcess) -> Iterator[openai.OpenAI]:
    """The official SDK client for ``llama_server``."""
    with sdk_client(llama_server) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def llama_tokenizer(tiny_llama_dir: Path) -> TinyTokenizer:
    """The tiny Llama's tokenizer, read independently of kakehashi."""
    return TinyTokenizer(tiny_llama_dir)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the output of the servers the test used."""
    report = yield
    if report.failed and report.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ServerProcess):
                report.sections.append(("kakehashi server output", value.output()))
    return report
