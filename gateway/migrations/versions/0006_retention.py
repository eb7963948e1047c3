"""retention: audit checkpoints, job locks, indexes on the time columns that purges scan

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("chain_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_chain_id", "audit_checkpoints", ["chain_id"])
    op.create_table(
        "job_locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_usage_ledger_at", "usage_ledger", ["at"])
    op.create_index("ix_audit_records_chain_at", "audit_records", ["chain_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_chain_at", "audit_records")
    op.drop_index("ix_usage_ledger_at", "usage_ledger")
    op.drop_table("job_locks")
    op.drop_table("audit_checkpoints")
