"""usage ledger

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_ledger",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=True),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("jurisdiction", sa.String(8), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_eur", sa.Numeric(20, 10), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("fx_rate", sa.Numeric(12, 6), nullable=False),
        sa.Column("price_source", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
    )
    op.create_index("ix_usage_ledger_tenant_at", "usage_ledger", ["tenant", "at"])
    op.create_index("ix_usage_ledger_key_at", "usage_ledger", ["key_id", "at"])
    op.create_index("ix_usage_ledger_subject", "usage_ledger", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_subject", "usage_ledger")
    op.drop_index("ix_usage_ledger_key_at", "usage_ledger")
    op.drop_index("ix_usage_ledger_tenant_at", "usage_ledger")
    op.drop_table("usage_ledger")
