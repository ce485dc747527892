"""Studies and API tokens.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuner_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("workload", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_studies"),
        sa.UniqueConstraint("name", name="uq_tuner_studies_name"),
    )
    op.create_index("ix_tuner_studies_workload", "tuner_studies", ["workload"])
    op.create_index("ix_tuner_studies_state", "tuner_studies", ["state"])
    op.create_table(
        "tuner_api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_api_tokens"),
        sa.UniqueConstraint("name", name="uq_tuner_api_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_tuner_api_tokens_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("tuner_api_tokens")
    op.drop_index("ix_tuner_studies_state", "tuner_studies")
    op.drop_index("ix_tuner_studies_workload", "tuner_studies")
    op.drop_table("tuner_studies")
