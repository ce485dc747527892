"""Token scopes and owners: tuner_api_tokens.scopes and tuner_api_tokens.owner.

Existing tokens keep doing what they did: they get the scopes "ask_tell create read" (all
but admin) and their own name as owner, which is what tuner_studies.created_by already
holds for the studies they created, so those stay theirs. Studies with no created_by
(adopted from the CLI or plain Optuna) can then only be stopped, resumed or deleted by an
admin token (`tuner token create --name NAME --scope admin`).

Downgrade drops both columns: every token is then a full writer again, as before 0005.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_TOKEN_SCOPES = "ask_tell create read"  # api.access.DEFAULT_SCOPES, frozen as of this revision

tokens = sa.table("tuner_api_tokens", sa.column("name", sa.String), sa.column("owner", sa.String), sa.column("scopes", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("tuner_api_tokens") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("scopes", sa.String(128), nullable=True))
    op.get_bind().execute(tokens.update().values(owner=tokens.c.name, scopes=OLD_TOKEN_SCOPES))
    with op.batch_alter_table("tuner_api_tokens") as batch:
        batch.alter_column("owner", existing_type=sa.String(64), nullable=False)
        batch.alter_column("scopes", existing_type=sa.String(128), nullable=False)
        batch.create_index("ix_tuner_api_tokens_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("tuner_api_tokens") as batch:
        batch.drop_index("ix_tuner_api_tokens_owner")
        batch.drop_column("scopes")
        batch.drop_column("owner")
