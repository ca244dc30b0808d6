"""One typed settings object, built once (CLI flags over ``KAKEHASHI_*`` env over an optional TOML
file) and passed down.

A settings file (``kakehashi serve --config FILE`` or ``KAKEHASHI_CONFIG=FILE``) holds the same
fields, plus tables that only make sense there::

    model = "/models/qwen2.5-0.5b-instruct"
    aliases = ["gpt-3.5-turbo"]

    [[keys]]
    key = "sk-team-a"
    tier = "tier-1"
    models = ["gpt-3.5-turbo", "text-embedding-ada-002"]   # optional allow-list

    [[models]]                      # a catalog entry (new, or overriding one by id)
    id = "gpt-4"
    serves = "qwen2.5-0.5b-instruct"
    min_tier = "tier-1"
    deprecated_on = 2025-01-01
    shutdown_on = 2025-07-01
    replacement = "gpt-4o"
"""

from __future__ import annotations

import os
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

DEMO_MODEL_ID = "kakehashi-demo"
PACKAGED_EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"
DEFAULT_TIERS = ("free", "tier-1", "tier-2", "tier-3", "tier-4", "tier-5")
CONFIG_ENV = "KAKEHASHI_CONFIG"

Capability = Literal["chat", "completions", "embeddings", "edits"]


def default_data_dir() -> Path:
    """Where kakehashi keeps generated models and other state for this user."""
    return Path(platformdirs.user_data_dir("kakehashi"))


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class KeySpec(BaseModel):
    """An API key, the access tier it belongs to and an optional model allow-list.

    A key without a tier may use every model; one without ``models`` any model its tier allows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    tier: str | None = None
    models: tuple[str, ...] | None = None
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """``KEY`` or ``KEY:TIER`` (the tier after the last colon), as ``--api-key`` takes it."""
        key, colon, tier = text.rpartition(":")
        if not colon or not key or not tier:
            return cls(key=text)
        return cls(key=key, tier=tier)

    @property
    def label(self) -> str:
        """How logs name the key: its name, else a masked form."""
        if self.name:
            return self.name
        return f"{self.key[:5]}***{self.key[-2:]}" if len(self.key) > 8 else "***"


class ModelSpec(BaseModel):
    """A catalog entry as configured: a new public model id, or changes to an existing one.

    ``serves`` names the served model (or catalog id) that answers it; without it an existing
    entry keeps its backend and a new one goes to the first backend with its capabilities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    serves: str | None = None
    owned_by: str | None = None
    created: int | None = None
    context_window: int | None = Field(default=None, ge=1)
    capabilities: tuple[Capability, ...] | None = None
    input_price: float | None = Field(default=None, ge=0, description="USD per 1M tokens")
    output_price: float | None = Field(default=None, ge=0, description="USD per 1M tokens")
    deprecated_on: date | None = None
    shutdown_on: date | None = None
    replacement: str | None = None
    aliases: tuple[str, ...] = ()
    tiers: tuple[str, ...] | None = None
    min_tier: str | None = None
    stable_alias: str | None = None
    stable_since: date | None = None
    dimensions: bool | None = Field(
        default=None, description="Whether `dimensions` may shorten this embedding model's output."
    )

    @model_validator(mode="after")
    def _dates_in_order(self) -> ModelSpec:
        if self.deprecated_on and self.shutdown_on and self.shutdown_on < self.deprecated_on:
            raise ValueError(f"{self.id}: shutdown_on is before deprecated_on")
        if self.stable_since is not None and self.stable_alias is None:
            raise ValueError(f"{self.id}: stable_since needs a stable_alias")
        return self


class Settings(BaseSettings):
    """Server configuration. Every field can be set as ``KAKEHASHI_<NAME>`` in the environment;
    list fields take comma-separated values there (``KAKEHASHI_API_KEYS=k1,k2:tier-1``)."""

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
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the model runs: cpu, cuda or cuda:N; auto is a CUDA GPU where torch "
        "sees one, else the CPU.",
    )

    # Embeddings
    embeddings: bool = Field(default=True, description="Serve an embedding model.")
    embedding_model: str | None = Field(
        default=None,
        description="Sentence-transformers model directory; None uses the packaged "
        "all-MiniLM-L6-v2 (the `embeddings` extra) when it is installed.",
    )
    embedding_model_name: str | None = None
    embedding_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["text-embedding-ada-002"]
    )

    # Catalog, lifecycle and access
    builtin_catalog: bool = Field(
        default=True, description="Include OpenAI's 2024-01-04 migration table in the catalog."
    )
    models: list[ModelSpec] = Field(default_factory=list)
    keys: list[KeySpec] = Field(default_factory=list)
    tiers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_TIERS))
    now: date | None = Field(
        default=None,
        description="Pretend today is this date (UTC) for model lifecycles; for tests and drills.",
    )

    # Where and how to listen
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Engine limits
    max_num_seqs: int = Field(default=64, ge=1)
    max_n: int = Field(default=16, ge=1, description="Largest `n` a request may ask for.")
    threads: int | None = Field(default=None, ge=1)
    kv_cache_memory: ByteSize | None = Field(
        default=None,
        description="KV cache budget, e.g. 2GiB (default: sized from max_num_seqs and free RAM).",
    )
    max_queue_len: int | None = Field(
        default=256,
        ge=0,
        description="Requests allowed to wait for a slot; beyond it requests get a 503.",
    )
    max_num_batched_tokens: int = Field(
        default=256,  # the engine's DEFAULT_MAX_NUM_BATCHED_TOKENS (see why there)
        ge=16,
        description="Tokens per engine step (bounds prefill chunks, so the stalls they cause).",
    )
    prefix_caching: bool = Field(default=True, description="Reuse KV blocks of shared prefixes.")
    cpu_kernels: bool = Field(
        default=True,
        description="kakehashi's AVX-512 BF16 kernels for bfloat16 decode, where the CPU has them.",
    )

    data_dir: Path = Field(default_factory=default_data_dir)

    # Platform: keys, rate limits, usage ledger, retention
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the platform database, e.g. postgresql://user@host/db "
        "(default: a SQLite file in the data directory).",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for rate limits shared by several replicas."
    )
    rate_limit_fail_open: bool = Field(
        default=True,
        description="When Redis cannot be reached, admit requests (with a loud warning) rather "
        "than refuse them with a 503.",
    )
    admin_key: SecretStr | None = Field(
        default=None, description="The key that guards /admin/... and /v1/organization/..."
    )
    retention_days: float = Field(
        default=30.0, gt=0, description="How long stored request and response bodies are kept."
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a verified key (and its spend) is trusted before it is read again; "
        "bounds how late a revocation reaches other replicas.",
    )
    ledger_flush_seconds: float = Field(
        default=0.2, gt=0, le=1.0, description="Longest a usage row waits before it is written."
    )

    # Batches
    batch_max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Batch lines one server runs at once (default: twice max_num_seqs, so the "
        "engine's batch stays full).",
    )
    batch_lease_seconds: float = Field(
        default=30.0,
        ge=1.0,
        description="How long a replica's claim on a batch lasts without renewal: after a crash, "
        "another replica (or the restarted one) takes the batch over this much later.",
    )

    @field_validator("aliases", "api_keys", "embedding_aliases", "tiers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _known_tiers(self) -> Settings:
        known = set(self.tiers)
        named = [k.tier for k in self.all_keys()]
        for spec in self.models:
            named += [spec.min_tier, *(spec.tiers or ())]
        unknown = sorted({t for t in named if t is not None and t not in known})
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; the tiers are {self.tiers}")
        return self

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides`` (flags) over ``KAKEHASHI_*`` env over the TOML file
        (``config_file``, else ``$KAKEHASHI_CONFIG``, else none)."""
        path = config_file or os.environ.get(CONFIG_ENV)
        if not path:
            return cls(**overrides)
        with Path(path).expanduser().open("rb") as stream:
            from_file = tomllib.load(stream)
        # Raw environment values, validated once below together with the file's.
        from_env = EnvSettingsSource(cls, env_prefix="KAKEHASHI_")()
        return cls(**{**from_file, **from_env, **overrides})

    def all_keys(self) -> list[KeySpec]:
        """Every accepted key: ``keys`` then ``api_keys`` (``KEY`` or ``KEY:TIER``)."""
        return [*self.keys, *(KeySpec.parse(text) for text in self.api_keys)]

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry one of the configured keys."""
        return bool(self.api_keys or self.keys)
