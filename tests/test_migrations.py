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


# -- revision 0003: study mode and state as enums ----------------------------------------------


def _insert_study(conn: sa.Connection, name: str, mode: str, state: str, spec_json: str = "{}") -> None:
    now = datetime.datetime(2025, 1, 1)
    conn.execute(
        sa.text(
            "INSERT INTO tuner_studies (name, workload, mode, state, spec_json, created_at, updated_at) "
            "VALUES (:name, 'replay', :mode, :state, :spec, :t, :t)"
        ),
        {"name": name, "mode": mode, "state": state, "spec": spec_json, "t": now},
    )


def _check_enum_columns_from_0002(url: str) -> None:
    from sqlalchemy.orm import Session

    from alembic import command
    from api.db.models import RunnerRow, StudyMode, StudyRow, StudyState

    migrate.upgrade(url, "0002")
    expected = {f"s-{state.value}": (StudyMode.ASK_TELL if state is StudyState.ASK_TELL else StudyMode.RUN, state) for state in StudyState}
    expected["s-cli"] = (StudyMode.CLI, StudyState.EXTERNAL)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:  # plain SQL, as revision 0002 stored them
            conn.execute(
                sa.text("INSERT INTO tuner_runners (id, host, pid, started_at, heartbeat_at) VALUES ('r1', 'h', 1, :t, :t)"),
                {"t": datetime.datetime(2025, 1, 1)},
            )
            for name, (mode, state) in expected.items():
                _insert_study(conn, name, mode.value, state.value)
            conn.execute(sa.text("UPDATE tuner_studies SET runner_id = 'r1' WHERE name = 's-running'"))
        migrate.upgrade(url, "head")
        assert migrate.schema_differences(url) == []
        with Session(engine) as session:
            rows = {row.name: row for row in session.scalars(sa.select(StudyRow))}
            assert {name: (row.mode, row.state) for name, row in rows.items()} == expected
            for row in rows.values():
                assert type(row.mode) is StudyMode and type(row.state) is StudyState
            assert rows["s-running"].runner_id == "r1" and session.get(RunnerRow, "r1") is not None
            # the enums query as well as they load
            queued = session.scalars(sa.select(StudyRow.name).where(StudyRow.state == StudyState.QUEUED)).all()
            assert queued == ["s-queued"]
        # the database itself refuses a state outside the enum (not only the ORM)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text("UPDATE tuner_studies SET state = 'paused' WHERE name = 's-queued'"))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text("UPDATE tuner_studies SET mode = 'batch' WHERE name = 's-queued'"))
        command.downgrade(migrate.alembic_config(url), "0002")
        assert migrate.current_revision(url) == "0002"
        with engine.begin() as conn:
            stored = dict(conn.execute(sa.text("SELECT name, state FROM tuner_studies")).all())
            assert stored == {name: state.value for name, (_, state) in expected.items()}
            conn.execute(sa.text("UPDATE tuner_studies SET state = 'paused' WHERE name = 's-queued'"))  # 0002 allowed it
    finally:
        engine.dispose()


def _check_unknown_state_stops_the_upgrade(url: str) -> None:
    migrate.upgrade(url, "0002")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _insert_study(conn, "fine", "run", "completed")
            _insert_study(conn, "odd", "run", "paused")
            _insert_study(conn, "odder", "batch", "running")
        with pytest.raises(RuntimeError) as caught:
            migrate.upgrade(url, "head")
        message = str(caught.value)
        assert "study 'odd' has state='paused'" in message and "study 'odder' has mode='batch'" in message
        assert "UPDATE" in message and "tuner db upgrade" in message
        assert migrate.current_revision(url) == "0002"  # nothing half-done
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tuner_studies SET state = 'failed' WHERE state = 'paused'"))
            conn.execute(sa.text("UPDATE tuner_studies SET mode = 'run' WHERE mode = 'batch'"))
        migrate.upgrade(url, "head")
        assert migrate.current_revision(url) == migrate.head_revision()
    finally:
        engine.dispose()


def test_enum_columns_on_a_populated_sqlite_database(tmp_path):
    _check_enum_columns_from_0002(f"sqlite:///{tmp_path / 'old.db'}")
    _check_unknown_state_stops_the_upgrade(f"sqlite:///{tmp_path / 'odd.db'}")


def test_orm_refuses_a_state_outside_the_enum(tmp_path):
    from sqlalchemy.orm import Session

    from api.db.models import StudyRow

    url = f"sqlite:///{tmp_path / 'orm.db'}"
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    try:
        with Session(engine) as session, pytest.raises(sa.exc.StatementError, match="paused"):
            session.add(StudyRow(name="x", workload="replay", mode="run", state="paused"))
            session.flush()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_enum_columns_on_a_populated_postgres_database():
    with pg_schema_db() as url:
        _check_enum_columns_from_0002(url)
    with pg_schema_db() as url:
        _check_unknown_state_stops_the_upgrade(url)


# -- revision 0004: the spec stored once, in Optuna's study user attr -------------------------


def _spec(name: str, n_trials: int) -> dict:
    from tuner.space import load_preset
    from tuner.study.spec import StudySpec

    return StudySpec(name=name, workload="gpt", space=load_preset("gpt_tiny_system"), n_trials=n_trials).to_dict()


def _check_spec_moves_into_the_optuna_attr(url: str) -> None:
    import json

    from sqlalchemy.orm import Session

    from alembic import command
    from api.db.models import StudyRow
    from api.repositories import studies as repo
    from tuner.study.attrs import StudyAttr
    from tuner.study.spec import StudySpec

    migrate.upgrade(url, "0003")
    only_row = _spec("only-row", 10)  # service study whose attr went missing: the row's copy is kept
    both_row, both_attr = _spec("both", 10), _spec("both", 30)  # a resumed CLI run updated the attr: it wins
    optuna.create_study(study_name="only-row", storage=url)
    optuna.create_study(study_name="both", storage=url).set_user_attr(StudyAttr.SPEC, both_attr)
    optuna.create_study(study_name="plain", storage=url)  # adopted plain Optuna study: no spec anywhere
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _insert_study(conn, "only-row", "run", "completed", json.dumps(only_row))
            _insert_study(conn, "both", "run", "stopped", json.dumps(both_row))
            _insert_study(conn, "plain", "cli", "external", "{}")
        migrate.upgrade(url, "head")
        assert migrate.schema_differences(url) == []
        assert "spec_json" not in {c["name"] for c in sa.inspect(engine).get_columns("tuner_studies")}
        assert optuna.load_study(study_name="only-row", storage=url).user_attrs[StudyAttr.SPEC] == only_row
        assert optuna.load_study(study_name="both", storage=url).user_attrs[StudyAttr.SPEC] == both_attr
        assert StudyAttr.SPEC not in optuna.load_study(study_name="plain", storage=url).user_attrs
        with Session(engine) as session:
            assert repo.spec_of(session, "only-row") == StudySpec.from_dict(only_row)
            assert repo.spec_of(session, "both").n_trials == 30
            assert repo.spec_of(session, "plain") is None
            assert repo.spec_of(session, "no-such-study") is None
            assert {r.name for r in session.scalars(sa.select(StudyRow))} == {"only-row", "both", "plain"}
        command.downgrade(migrate.alembic_config(url), "0003")
        with engine.begin() as conn:
            stored = {name: json.loads(spec) for name, spec in conn.execute(sa.text("SELECT name, spec_json FROM tuner_studies"))}
        assert stored == {"only-row": only_row, "both": both_attr, "plain": {}}
        migrate.upgrade(url, "head")  # and up again
    finally:
        engine.dispose()


def _check_spec_without_an_optuna_study_stops_the_upgrade(url: str) -> None:
    import json

    migrate.upgrade(url, "0003")
    optuna.create_study(study_name="kept", storage=url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _insert_study(conn, "kept", "run", "completed", json.dumps(_spec("kept", 5)))
            _insert_study(conn, "gone", "run", "completed", json.dumps(_spec("gone", 5)))
        with pytest.raises(RuntimeError, match=r"have no Optuna study: 'gone'.*DELETE FROM tuner_studies"):
            migrate.upgrade(url, "head")
        assert migrate.current_revision(url) == "0003"
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tuner_studies")).scalar_one() == 2  # nothing lost
            conn.execute(sa.text("DELETE FROM tuner_studies WHERE name = 'gone'"))
        migrate.upgrade(url, "head")
        assert migrate.current_revision(url) == migrate.head_revision()
    finally:
        engine.dispose()


def test_spec_moves_into_the_optuna_attr_on_sqlite(tmp_path):
    _check_spec_moves_into_the_optuna_attr(f"sqlite:///{tmp_path / 'old.db'}")
    _check_spec_without_an_optuna_study_stops_the_upgrade(f"sqlite:///{tmp_path / 'gone.db'}")


@pytest.mark.postgres
def test_spec_moves_into_the_optuna_attr_on_postgres():
    with pg_schema_db() as url:
        _check_spec_moves_into_the_optuna_attr(url)
    with pg_schema_db() as url:
        _check_spec_without_an_optuna_study_stops_the_upgrade(url)
