"""Study mode and state as enums: CHECK constraints on the existing VARCHAR(16) columns.

The models map them with SQLAlchemy Enum(native_enum=False): still VARCHAR(16) holding the
same values, so no data changes; the constraints make the database refuse anything else.
A database that already holds a value outside the lists is not altered: the upgrade stops
and names the rows, because silently mapping them would invent a lifecycle state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of api.db.models.StudyState / StudyMode as of this revision: a migration must
# keep doing what it did when it was written, whatever the enums become later.
STATES = ("queued", "running", "stopping", "stopped", "completed", "failed", "ask_tell", "external")
MODES = ("run", "ask_tell", "cli")
CHECKS = {"state": STATES, "mode": MODES}  # column -> allowed values; constraint ck_tuner_studies_<column>


def _refuse_unknown_values() -> None:
    conn = op.get_bind()
    studies = sa.table("tuner_studies", sa.column("name"), sa.column("state"), sa.column("mode"))
    problems = []
    for column, allowed in CHECKS.items():
        rows = conn.execute(
            sa.select(studies.c.name, studies.c[column]).where(studies.c[column].not_in(allowed)).order_by(studies.c.name)
        ).all()
        problems += [f"study {name!r} has {column}={value!r}" for name, value in rows]
    if problems:
        raise RuntimeError(
            "revision 0003 makes tuner_studies.state and .mode enums, but "
            + "; ".join(problems[:20])
            + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else "")
            + f". Allowed: state in {', '.join(STATES)}; mode in {', '.join(MODES)}. "
            "Fix: UPDATE those rows to an allowed value (e.g. state='failed'), then run `tuner db upgrade` again."
        )


def upgrade() -> None:
    _refuse_unknown_values()
    # SQLite cannot add a constraint to a table: batch mode rebuilds it (PostgreSQL: ALTER TABLE).
    with op.batch_alter_table("tuner_studies") as batch:
        for column, allowed in CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_tuner_studies_{column}"), sa.column(column).in_(allowed))


def downgrade() -> None:
    with op.batch_alter_table("tuner_studies") as batch:
        for column in CHECKS:
            batch.drop_constraint(op.f(f"ck_tuner_studies_{column}"), type_="check")
