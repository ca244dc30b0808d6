"""Loading the embedding model: onto the same ``--device`` as the language model."""

from __future__ import annotations

import pytest
import torch

from kakehashi.backends.embedding import load_embedding_model
from kakehashi.engine.packaged_embedding import find_packaged_embedding_model

NO_GPU = not torch.cuda.is_available()


def test_the_embedding_model_loads_on_the_configured_device() -> None:
    model_dir = find_packaged_embedding_model()
    if model_dir is None:
        pytest.skip("the packaged embedding model is not installed (the `embeddings` extra)")
    model = load_embedding_model(model_dir, "cpu")
    vectors = model.embed([model.tokenize(["a device test"])[0]])
    assert vectors.shape == (1, model.dimensions) and vectors.device.type == "cpu"
    if NO_GPU:
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            load_embedding_model(model_dir, "cuda")
