"""One stored copy of a study's spec: Optuna's study user attr `tuner.spec`; drop spec_json.

The spec was stored twice: tuner_studies.spec_json and the attr. The attr is the one every
reader can see (the CLI and `tuner worker` have no tuner_* tables; optuna-dashboard and
optuna.load_study show it) and the one a resumed CLI study updates, so it stays. Before the
column goes, its spec is copied into the attr of any study that lacks one. A row whose
spec has no Optuna study to go to stops the upgrade (the spec would be lost), naming it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SPEC_KEY = "tuner.spec"  # tuner.study.attrs.StudyAttr.SPEC, frozen as of this revision

tuner_studies = sa.table("tuner_studies", sa.column("name", sa.String), sa.column("spec_json", sa.Text))
# Optuna's tables (its own schema, created by `tuner db upgrade` beside ours)
optuna_studies = sa.table("studies", sa.column("study_id", sa.Integer), sa.column("study_name", sa.String))
optuna_attrs = sa.table(
    "study_user_attributes",
    sa.column("study_id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("value_json", sa.Text),
)


def _has_spec(spec_json: str | None) -> bool:
    """'{}' was written for studies adopted without a spec: nothing to keep."""
    try:
        return bool(json.loads(spec_json or "{}"))
    except ValueError:
        return True  # not JSON: keep it where it can be seen rather than drop it


def upgrade() -> None:
    conn = op.get_bind()
    rows = [(name, spec) for name, spec in conn.execute(sa.select(tuner_studies.c.name, tuner_studies.c.spec_json)) if _has_spec(spec)]
    if rows:
        if not sa.inspect(conn).has_table("studies"):
            study_ids: dict[str, int] = {}
            with_attr: set[int] = set()
        else:
            study_ids = dict(conn.execute(sa.select(optuna_studies.c.study_name, optuna_studies.c.study_id)).all())
            with_attr = set(conn.execute(sa.select(optuna_attrs.c.study_id).where(optuna_attrs.c.key == SPEC_KEY)).scalars())
        orphans = sorted(name for name, _ in rows if name not in study_ids)
        if orphans:
            raise RuntimeError(
                "revision 0004 moves each study's spec into its Optuna study (user attr tuner.spec), but "
                f"{len(orphans)} row(s) of tuner_studies have no Optuna study: {', '.join(map(repr, orphans[:20]))}. "
                "Fix: if they were deleted from Optuna on purpose, DELETE FROM tuner_studies WHERE name IN (...); "
                "otherwise restore their Optuna studies; then run `tuner db upgrade` again."
            )
        missing = [{"study_id": study_ids[name], "key": SPEC_KEY, "value_json": spec} for name, spec in rows if study_ids[name] not in with_attr]
        if missing:
            # value_json is what Optuna's RDBStorage writes: json.dumps(value), as spec_json was
            conn.execute(optuna_attrs.insert(), missing)
    with op.batch_alter_table("tuner_studies") as batch:
        batch.drop_column("spec_json")


def downgrade() -> None:
    with op.batch_alter_table("tuner_studies") as batch:
        batch.add_column(sa.Column("spec_json", sa.Text(), nullable=True))
    conn = op.get_bind()
    specs: dict[str, str] = {}
    if sa.inspect(conn).has_table("study_user_attributes"):
        joined = optuna_attrs.join(optuna_studies, optuna_studies.c.study_id == optuna_attrs.c.study_id)
        specs = dict(
            conn.execute(sa.select(optuna_studies.c.study_name, optuna_attrs.c.value_json).select_from(joined).where(optuna_attrs.c.key == SPEC_KEY)).all()
        )
    for name in conn.execute(sa.select(tuner_studies.c.name)).scalars().all():
        conn.execute(tuner_studies.update().where(tuner_studies.c.name == name).values(spec_json=specs.get(name, "{}")))
    with op.batch_alter_table("tuner_studies") as batch:
        batch.alter_column("spec_json", existing_type=sa.Text(), nullable=False)
