"""One typed settings object, built once (CLI flags over ``KAKEHASHI_*`` env) and passed down."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

DEMO_MODEL_ID = "kakehashi-demo"


def default_data_dir() -> Path:
    """Where kakehashi keeps generated models and other state for this user."""
    return Path(platformdirs.user_data_dir("kakehashi"))


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Server configuration. Every field can be set as ``KAKEHASHI_<NAME>`` in the environment;
    list fields take comma-separated values there (``KAKEHASHI_API_KEYS=k1,k2``)."""

    model_config = SettingsConfigDict(env_prefix="KAKEHASHI_", extra="ignore")

    # What to serve
    model: str | None = Field(
        default=None,
        description="Local Hugging Face model directory or hub id; None serves the built-in demo.",
    )
    served_model_name: str | None = Field(
        default=None, description="Public model id; defaults to the directory name or demo id."
    )
    aliases: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_model_len: int | None = Field(default=None, ge=16)
    dtype: str = Field(default="auto", pattern="^(auto|float32|bfloat16|float16)$")

    # Where and how to listen
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Engine limits
    max_num_seqs: int = Field(default=64, ge=1)
    max_n: int = Field(default=16, ge=1, description="Largest `n` a request may ask for.")
    threads: int | None = Field(default=None, ge=1)

    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("aliases", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry one of ``api_keys``."""
        return bool(self.api_keys)
