"""subject keys (crypto-shredding of ledger and audit links) and the erasure log

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_subject_keys_tenant_subject", "subject_keys", ["tenant", "subject"])
    op.create_table(
        "subject_erasures",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("target", sa.String(64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=True),
    )
    op.create_index("ix_subject_erasures_target", "subject_erasures", ["target"])
    op.create_index("ix_audit_records_tenant_subject", "audit_records", ["tenant", "subject"])
    op.create_index("ix_consents_tenant_subject", "consents", ["tenant", "subject"])


def downgrade() -> None:
    op.drop_index("ix_consents_tenant_subject", "consents")
    op.drop_index("ix_audit_records_tenant_subject", "audit_records")
    op.drop_table("subject_erasures")
    op.drop_table("subject_keys")
