"""A study whose workers cannot start stops with the cause instead of burning its budget.

Real `LocalExecutor` workers that fail at start-up: an import error inside the worker
(tests/broken_worker_workloads.py) and a bad interpreter. The trials that never ran do
not count toward n_trials and are run on resume; the user's own failing trials still
count as trials, as before.
"""

from __future__ import annotations

import multiprocessing.spawn
import time

import optuna
import pytest

from tests.broken_worker_workloads import BREAK_VAR
from tuner.errors import InfrastructureError
from tuner.executors.local import LocalExecutor
from tuner.space.search_space import load_space
from tuner.study import run_study
from tuner.study.loop import MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES
from tuner.study.spec import StudySpec
from tuner.types import TrialBudget, TrialResult

SPACE = {"name": "steady", "params": {"micro_batch_size": {"type": "categorical", "choices": [1, 2, 4, 8]}}}


def _spec(name: str, **extra: object) -> StudySpec:
    fields = dict(
        name=name, workload="steady", space=load_space(SPACE), n_trials=6, sampler="random",
        budget=TrialBudget(max_steps=2, warmup_steps=0), baseline=True, use_generator=False, device="cpu",
    ) | extra  # fmt: skip
    return StudySpec(**fields)  # type: ignore[arg-type]


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).trials


def test_an_import_error_in_the_worker_stops_the_study_with_the_cause_then_resume_runs_it(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv(BREAK_VAR, "1")
    started = time.monotonic()
    with LocalExecutor(workers=1, device="cpu") as broken, pytest.raises(InfrastructureError) as caught:
        run_study(_spec("cannot-start"), storage=url, executor=broken, confirm=0)
    message = str(caught.value)
    assert f"{MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES} trials in a row could not run" in message
    assert "ImportError: simulated: a dependency missing in the worker" in message  # the cause, from the worker
    assert "resume" in message and caught.value.retryable
    assert time.monotonic() - started < 90

    trials = _trials(url, "cannot-start")
    failed = [t for t in trials if t.state.name == "FAIL"]
    # the baseline counted as the first failure: the study asked only 2 trials of its 6
    assert len(failed) == MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES - 1
    for trial in failed:
        result = TrialResult.from_dict(trial.user_attrs["tuner.result"])
        assert result.infrastructure and "could not start" in (result.reason or "")
        assert trial.user_attrs["tuner.kind"] == "abandoned"  # not counted toward n_trials
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["tuner.retry_of"] == failed[-1].number  # asked again first on resume

    monkeypatch.delenv(BREAK_VAR)  # the cause fixed
    with LocalExecutor(workers=1, device="cpu") as fixed:
        outcome = run_study(_spec("cannot-start"), storage=url, executor=fixed, confirm=0)
    assert outcome.stopped_because == "n_trials"
    assert outcome.n_complete == 6 and outcome.n_failed == 0  # the 2 that never ran are not in the 6
    assert outcome.baseline_result is not None and outcome.baseline_result.ok


def test_a_bad_worker_interpreter_stops_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fake = tmp_path / "python-broken"
    fake.write_text("#!/bin/sh\nsleep 0.2\necho 'bad interpreter' >&2\nexit 1\n")
    fake.chmod(0o755)
    original = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable(str(fake))
    try:
        with LocalExecutor(workers=2, device="cpu") as broken, pytest.raises(InfrastructureError) as caught:
            run_study(_spec("bad-interpreter", baseline=False, n_trials=50), storage=url, executor=broken, confirm=0)
    finally:
        multiprocessing.spawn.set_executable(original)
    assert "worker process exited with code 1 while starting" in str(caught.value)
    trials = _trials(url, "bad-interpreter")
    # two workers: at most one more trial in flight when the third failure stopped asking
    assert len([t for t in trials if t.state.name == "FAIL"]) <= MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES + 1


def test_the_users_own_failing_trials_still_count_as_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = _spec("user-bug", workload_params={"raise": True}, baseline=False, n_trials=5)
    with LocalExecutor(workers=1, device="cpu") as ex:
        outcome = run_study(spec, storage=url, executor=ex, confirm=0)
    assert outcome.stopped_because == "n_trials" and outcome.n_failed == 5
    for trial in _trials(url, "user-bug"):
        result = TrialResult.from_dict(trial.user_attrs["tuner.result"])
        assert not result.infrastructure and "the user's own bug" in (result.reason or "")


def test_a_server_run_study_whose_workers_cannot_start_ends_failed_with_the_cause(tmp_path):
    """The service's runner: the study ends `failed` with the reason, not `completed`
    after its whole budget of FAIL trials."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from tests._api_support import GPT_TABLE, REPLAY_SPACE, new_token, sqlite_db

    url = sqlite_db(tmp_path)
    token = new_token(url)
    fake = tmp_path / "python-broken"
    fake.write_text("#!/bin/sh\nsleep 0.2\nexit 1\n")
    fake.chmod(0o755)
    original = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable(str(fake))
    try:
        app = create_app(Settings(storage=url, run_studies=True, replay_tables={"gpt_124m": GPT_TABLE}))
        with TestClient(app) as client:
            body = {"name": "srv", "workload": "replay", "workload_params": {"table": "gpt_124m"}, "space": REPLAY_SPACE, "n_trials": 40, "device": "cpu"}
            created = client.post("/api/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"})
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 90
            study = created.json()
            while study["state"] not in ("failed", "completed") and time.monotonic() < deadline:
                time.sleep(0.2)
                study = client.get("/api/v1/studies/srv").json()
    finally:
        multiprocessing.spawn.set_executable(original)
    assert study["state"] == "failed", study
    assert "InfrastructureError" in study["reason"] and "exited with code 1 while starting" in study["reason"]
    assert study["progress"]["failed"] <= MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES + 1
