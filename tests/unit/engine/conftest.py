"""Shared engine fixtures: tiny random-weight models written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakehashi.engine.models.tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-architecture model directory (float32, Llama-3-like chat format)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-architecture model directory (float32, ChatML, tied embeddings)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")
