"""The out-of-process trial writer: same results as the in-thread one, survives the death
of its child, never outlives the server, and says why when it cannot open the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing.connection import wait
from pathlib import Path

import optuna
import pytest

from tests._api_support import trial_template
from tuner.asktell.writer_process import ProcessTrialWriter, WriterProcessError

ROOT = Path(__file__).resolve().parents[1]


_template = trial_template


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it yet


def test_batches_commit_in_the_child_and_a_stale_tell_fails_alone(rdb_url):
    from tuner.asktell.trial_writer import CreateTrial, FinishTrial

    study = optuna.create_study(study_name="w", storage=rdb_url, direction="maximize")
    writer = ProcessTrialWriter(rdb_url)
    try:
        futures = [writer.submit(CreateTrial(study._study_id, _template(float(x)))) for x in (1, 2, 3)]
        created = [f.result(timeout=60) for f in futures]
        assert sorted(number for _, number in created) == [0, 1, 2]
        assert writer.child_pid not in (None, os.getpid())
        (id0, _), (id1, _), _ = created
        writer.apply(FinishTrial(id0, optuna.trial.TrialState.COMPLETE, [5.0], {"tuner.result": {"status": "ok"}}))
        done = writer.submit(FinishTrial(id1, optuna.trial.TrialState.COMPLETE, [6.0]))
        stale = writer.submit(FinishTrial(id0, optuna.trial.TrialState.COMPLETE, [7.0]))  # told twice
        assert done.result(timeout=60) is None
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            stale.result(timeout=60)
    finally:
        writer.close()
    trials = optuna.load_study(study_name="w", storage=rdb_url).trials
    assert [(t.number, t.state.name, t.values) for t in trials] == [
        (0, "COMPLETE", [5.0]), (1, "COMPLETE", [6.0]), (2, "RUNNING", None)
    ]
    assert trials[0].user_attrs == {"tuner.kind": "trial", "tuner.result": {"status": "ok"}}


def test_a_killed_child_is_replaced_and_close_stops_it(tmp_path):
    from tuner.asktell.trial_writer import CreateTrial

    url = f"sqlite:///{tmp_path / 'k.db'}"
    study = optuna.create_study(study_name="k", storage=url)
    writer = ProcessTrialWriter(url)
    try:
        writer.apply(CreateTrial(study._study_id, _template(1.0)))
        first = writer.child_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # dead for good once its sentinel (a pipe the child held) reads EOF; a batch
        # sent at the very moment it dies fails instead (test_batches_... covers errors)
        assert wait([writer._child.sentinel], timeout=10)
        _, number = writer.apply(CreateTrial(study._study_id, _template(2.0)))
        assert number == 1 and writer.restarts == 1
        second = writer.child_pid
        assert second not in (None, first)
    finally:
        writer.close()
    assert not _alive(second)
    assert [t.params["x"] for t in optuna.load_study(study_name="k", storage=url).trials] == [1.0, 2.0]


def test_the_child_exits_when_the_server_process_is_killed(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import optuna
        from tuner.asktell.trial_writer import CreateTrial
        from tuner.asktell.writer_process import ProcessTrialWriter
        from tests.test_writer_process import _template
        study = optuna.create_study(study_name="o", storage={url!r})
        writer = ProcessTrialWriter({url!r})
        writer.apply(CreateTrial(study._study_id, _template(1.0)))
        print(writer.child_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # as a crash: no clean-up runs
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the writer child outlived its killed parent"


def test_a_database_the_child_cannot_open_fails_the_batch_with_the_reason(tmp_path):
    from tuner.asktell.trial_writer import CreateTrial

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    writer = ProcessTrialWriter(f"sqlite:///{not_a_dir / 'x.db'}")  # its "directory" is a file
    try:
        with pytest.raises(WriterProcessError, match="could not open the database"):
            writer.apply(CreateTrial(1, _template(1.0)), timeout=120)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_an_operation_after_close_fails_at_once_instead_of_waiting_forever(tmp_path, kind):
    from tuner.asktell.trial_writer import CreateTrial, TrialWriter

    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="c", storage=url)
    writer = TrialWriter(optuna.storages.RDBStorage(url)) if kind == "thread" else ProcessTrialWriter(url)
    writer.close()
    future = writer.submit(CreateTrial(study._study_id, _template(1.0)))
    with pytest.raises(RuntimeError, match="closed"):
        future.result(timeout=5)


def test_a_writer_that_cannot_reach_the_database_is_a_503_not_a_500(tmp_path):
    """The writer's process started during a database outage (the first ask of a study on a
    loaded machine can come that late): the ask answers a retryable 503, as any database
    error does, without the database URL."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from tests._api_support import TINY_SPACE, new_token, sqlite_db

    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False, sampler_process=False))
    headers = {"Authorization": f"Bearer {new_token(url)}"}
    writer = app.state.ctx.asktell.writer
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    writer.storage_url = f"sqlite:///{not_a_dir / 'x.db'}"  # the child cannot open it: as in an outage
    with TestClient(app) as client:
        assert client.post("/api/v1/studies", json={"name": "w", "space": TINY_SPACE, "run": False}, headers=headers).status_code == 201
        down = client.post("/api/v1/studies/w/ask", headers=headers)
        assert down.status_code == 503 and down.json()["retryable"] is True, down.text
        assert "sqlite" not in down.text and down.headers["content-type"] == "application/problem+json"
    # (that the retry succeeds once the database is back: tests/test_pg_outage.py)
