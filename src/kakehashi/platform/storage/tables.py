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

files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("status", String(16), nullable=False),
    Index("ix_files_owner_id", "owner", "id"),
    Index("ix_files_expires", "expires_at"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("principal", JSON, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(40), nullable=False),
    Column("completion_window", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger),
    Column("expires_at", BigInteger, nullable=False),
    Column("finalizing_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("failed_at", BigInteger),
    Column("expired_at", BigInteger),
    Column("cancelling_at", BigInteger),
    Column("cancelled_at", BigInteger),
    Column("output_file_id", String(40)),
    Column("error_file_id", String(40)),
    Column("errors", JSON),
    Column("metadata", JSON),
    Column("output_expires_after", Integer),
    Column("model", String(200)),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cached_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("lease_owner", String(64)),
    Column("lease_expires_ms", BigInteger),
    Index("ix_batches_owner_id", "owner", "id"),
    Index("ix_batches_status", "status"),
)

batch_lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("line_no", Integer, primary_key=True, autoincrement=False),
    Column("custom_id", String(512), nullable=False),
    Column("body", Text, nullable=False),
    Column("done", Boolean, nullable=False, server_default="0"),
    Column("ok", Boolean),
    Column("result", Text),
    UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
)
