"""Run and check our Alembic migrations (tuner_* tables) plus Optuna's own schema."""

from __future__ import annotations

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic import command
from api.db.engine import make_engine
from api.settings import normalize_storage_url
from tuner.bundled import bundled_dir
from tuner.errors import TunerError

# alembic/ at the repository root; package data `api/db/migrations` in a wheel (tuner.bundled)
ALEMBIC_DIR = bundled_dir("api.db", "migrations", "alembic")
VERSION_TABLE = "tuner_alembic_version"


class SchemaOutOfDateError(TunerError):
    """The database's tuner_* schema is not the one this code needs."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    # '%' is ConfigParser interpolation syntax; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", normalize_storage_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring our tables to `revision` and create/upgrade Optuna's tables in the same DB."""
    command.upgrade(alembic_config(url), revision)
    if revision == "head":
        from tuner.storage.rdb import open_storage

        open_storage(url)  # creates Optuna's schema when missing


def upgrade_command(url: str) -> str:
    return f"tuner db upgrade --storage '{url}'"


def ensure_schema_current(url: str) -> None:
    """Refuse to serve a database whose schema this code does not match, saying how to fix it."""
    current = current_revision(url)
    head = head_revision()
    if current != head:
        found = "no tuner tables" if current is None else f"schema revision {current}"
        raise SchemaOutOfDateError(
            f"the database {url} has {found}, this tuner needs revision {head}; "
            f"run: {upgrade_command(url)}"
        )


def schema_differences(url: str) -> list[str]:
    """Differences between our models and the tuner_* tables (empty when in sync)."""
    from alembic.autogenerate import compare_metadata

    from api.db.models import TABLE_PREFIX, Base

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLE,
                    "include_object": lambda obj, name, type_, reflected, compare_to: (
                        type_ != "table" or (bool(name) and name.startswith(TABLE_PREFIX) and name != VERSION_TABLE)
                    ),
                },
            )
            return [str(diff) for diff in compare_metadata(context, Base.metadata)]
    finally:
        engine.dispose()
