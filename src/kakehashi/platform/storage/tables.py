"""The platform's tables, as SQLAlchemy Core metadata.

The migrations under ``migrations/versions`` create them; this module is what the code reads
and writes through. Times are Unix seconds (keys) or milliseconds (ledger and bodies, where
buckets of one minute need the precision and integer division makes them the same on every
database).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants 64 bits for a ledger.
RowId = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("redacted_value", String(40), nullable=False),
    Column("tier", String(64)),
    Column("allowed_models", JSON),
    Column("denied_models", JSON),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("model_limits", JSON),
    Column("budget_usd", Float),
    Column("spent_usd", Float, nullable=False, server_default="0"),
    Column("store_bodies", Boolean, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
    Column("last_used_at", BigInteger),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("backend", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("status", String(16), nullable=False),
    Column("error_code", String(128)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("batch_id", String(128)),
    Column("cost_usd", Float, nullable=False),
    UniqueConstraint("request_id", "attempt", name="uq_usage_request_attempt"),
    Index("ix_usage_started", "started_at_ms"),
    Index("ix_usage_key_started", "key_id", "started_at_ms"),
)

stored_bodies = Table(
    "stored_bodies",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("request_body", Text, nullable=False),
    Column("response_body", Text),
    Index("ix_bodies_created", "created_at_ms"),
    Index("ix_bodies_request", "request_id"),
)
