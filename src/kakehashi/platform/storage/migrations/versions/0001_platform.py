"""The platform's first tables: API keys (hashes only), the usage ledger, stored bodies.

The ledger is append-only, and the database enforces it: a trigger refuses every UPDATE and
DELETE of its rows.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_APPEND_ONLY = "the usage ledger is append-only"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("redacted_value", sa.String(40), nullable=False),
        sa.Column("tier", sa.String(64)),
        sa.Column("allowed_models", sa.JSON),
        sa.Column("denied_models", sa.JSON),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("model_limits", sa.JSON),
        sa.Column("budget_usd", sa.Float),
        sa.Column("spent_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("store_bodies", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("revoked_at", sa.BigInteger),
        sa.Column("last_used_at", sa.BigInteger),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", _row_id, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("backend", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(128)),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
        sa.Column("batch_id", sa.String(128)),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.UniqueConstraint("request_id", "attempt", name="uq_usage_request_attempt"),
    )
    op.create_index("ix_usage_started", "usage_records", ["started_at_ms"])
    op.create_index("ix_usage_key_started", "usage_records", ["key_id", "started_at_ms"])
    op.create_table(
        "stored_bodies",
        sa.Column("id", _row_id, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("request_body", sa.Text, nullable=False),
        sa.Column("response_body", sa.Text),
    )
    op.create_index("ix_bodies_created", "stored_bodies", ["created_at_ms"])
    op.create_index("ix_bodies_request", "stored_bodies", ["request_id"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION kakehashi_usage_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER usage_records_append_only BEFORE UPDATE OR DELETE ON usage_records "
            "FOR EACH ROW EXECUTE FUNCTION kakehashi_usage_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER usage_records_no_{action.lower()} BEFORE {action} "
                f"ON usage_records BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER usage_records_append_only ON usage_records")
        op.execute("DROP FUNCTION kakehashi_usage_append_only()")
    op.drop_table("stored_bodies")
    op.drop_table("usage_records")
    op.drop_table("api_keys")
