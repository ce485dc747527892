"""Alembic environment for the tuner_* tables only.

`include_object` keeps autogenerate and `tuner db check` blind to Optuna's tables, and
the version table is ours (`tuner_alembic_version`), never Optuna's `alembic_version`.
"""

from __future__ import annotations

from alembic import context
from api.db.engine import make_engine
from api.db.models import TABLE_PREFIX, Base

VERSION_TABLE = "tuner_alembic_version"
config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX) and name != VERSION_TABLE
    return True


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=True,  # SQLite needs batch mode to alter tables
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `tuner db upgrade --storage URL`")
run_migrations_online()
