"""Runner heartbeats (restart recovery) and stored hardware probes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuner_runners",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_runners"),
    )
    op.create_index("ix_tuner_runners_heartbeat_at", "tuner_runners", ["heartbeat_at"])
    op.create_table(
        "tuner_hardware_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("profile_json", sa.Text(), nullable=False),
        sa.Column("probed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_hardware_profiles"),
    )
    op.create_index("ix_tuner_hardware_profiles_host", "tuner_hardware_profiles", ["host"])
    # Studies created before this revision have no runner: NULL is the right value.
    with op.batch_alter_table("tuner_studies") as batch:
        batch.add_column(sa.Column("runner_id", sa.String(36), nullable=True))
        batch.create_index("ix_tuner_studies_runner_id", ["runner_id"])
        batch.create_foreign_key(
            "fk_tuner_studies_runner_id_tuner_runners",
            "tuner_runners",
            ["runner_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("tuner_studies") as batch:
        batch.drop_constraint("fk_tuner_studies_runner_id_tuner_runners", type_="foreignkey")
        batch.drop_index("ix_tuner_studies_runner_id")
        batch.drop_column("runner_id")
    op.drop_index("ix_tuner_hardware_profiles_host", "tuner_hardware_profiles")
    op.drop_table("tuner_hardware_profiles")
    op.drop_index("ix_tuner_runners_heartbeat_at", "tuner_runners")
    op.drop_table("tuner_runners")
