"""Alembic migrations of the tuner_* tables: empty database, previous revision, start-up check."""

from __future__ import annotations

import datetime

import optuna
import pytest
import sqlalchemy as sa

from api.db import migrate
from api.main import create_app
from api.settings import Settings
from tests._api_support import pg_schema_db
from tuner.cli.main import main as tuner_main


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _check_upgrade_from_previous_revision(url: str) -> None:
    migrate.upgrade(url, "0001")
    assert migrate.current_revision(url) == "0001"
    # Optuna's own tables and version table live next to ours untouched.
    study = optuna.create_study(study_name="old", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    engine = sa.create_engine(url)
    now = datetime.datetime(2025, 1, 1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tuner_studies (name, workload, mode, state, spec_json, created_at, updated_at) "
                "VALUES ('old', 'replay', 'run', 'running', '{}', :t, :t)"
            ),
            {"t": now},
        )
        conn.execute(sa.text("INSERT INTO tuner_api_tokens (name, token_hash, created_at) VALUES ('ci', 'abc', :t)"), {"t": now})
        optuna_version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    # A server refuses the old schema and names the command that fixes it.
    with pytest.raises(migrate.SchemaOutOfDateError, match="tuner db upgrade --storage"):
        create_app(Settings(storage=url, run_studies=False))
    assert tuner_main(["db", "check", "--storage", url]) == 1
    assert tuner_main(["db", "upgrade", "--storage", url]) == 0
    assert migrate.current_revision(url) == migrate.head_revision()
    assert migrate.schema_differences(url) == []
    with engine.begin() as conn:
        row = conn.execute(sa.text("SELECT name, state, runner_id FROM tuner_studies")).one()
        assert tuple(row) == ("old", "running", None)  # data kept, new column empty
        assert conn.execute(sa.text("SELECT name FROM tuner_api_tokens")).scalar_one() == "ci"
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == optuna_version
    engine.dispose()
    assert len(optuna.load_study(study_name="old", storage=url).trials) == 2
    assert tuner_main(["db", "check", "--storage", url]) == 0
    # and back down, which must also leave Optuna alone
    migrate.upgrade(url, "head")
    from alembic import command

    command.downgrade(migrate.alembic_config(url), "base")
    assert migrate.current_revision(url) is None
    assert len(optuna.load_study(study_name="old", storage=url).trials) == 2


def test_upgrade_empty_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(migrate.SchemaOutOfDateError, match="no tuner tables"):
        migrate.ensure_schema_current(url)
    assert tuner_main(["db", "upgrade", "--storage", url]) == 0
    tables = _tables(url)
    assert {"tuner_studies", "tuner_api_tokens", "tuner_runners", "tuner_hardware_profiles", "tuner_alembic_version"} <= tables
    assert {"studies", "trials", "alembic_version"} <= tables  # Optuna's, created by the same command
    migrate.ensure_schema_current(url)


def test_upgrade_sqlite_database_created_by_previous_revision(tmp_path):
    _check_upgrade_from_previous_revision(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_migrations_on_postgres():
    with pg_schema_db() as url:
        migrate.upgrade(url)
        assert migrate.schema_differences(url) == []
    with pg_schema_db() as url:
        _check_upgrade_from_previous_revision(url)
