"""Where kakehashi keeps its state, readable without loading the settings machinery (the client
commands start faster without pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "KAKEHASHI_DATA_DIR"


def default_data_dir() -> Path:
    """Where kakehashi keeps generated models and other state for this user."""
    import platformdirs

    return Path(platformdirs.user_data_dir("kakehashi"))


def data_dir() -> Path:
    """``KAKEHASHI_DATA_DIR`` if set, else :func:`default_data_dir` (as ``Settings.data_dir``
    reads it)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser() if configured else default_data_dir()
