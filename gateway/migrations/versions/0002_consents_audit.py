"""consent registry and audit trail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_ref", sa.String(256), nullable=False, server_default=""),
    )
    op.create_index("ix_consents_lookup", "consents", ["tenant", "subject", "purpose"])
    op.create_table(
        "audit_records",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("chain_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("decisions", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Text(), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=True),
        sa.Column("jurisdiction", sa.String(8), nullable=True),
        sa.Column("fallback", sa.String(64), nullable=True),
        sa.Column("consent_ref", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_chain_seq", "audit_records", ["chain_id", "seq"], unique=True)
    op.create_index("ix_audit_tenant_at", "audit_records", ["tenant", "at"])
    op.create_index("ix_audit_subject", "audit_records", ["subject"])


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_index("ix_consents_lookup", "consents")
    op.drop_table("consents")
