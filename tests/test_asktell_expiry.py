"""Ask/tell trials nobody tells expire to FAIL (durably, once, on any replica), a heartbeat
or report keeps one alive, a late tell gets a 409 saying it expired, and a study whose
n_trials are told or expired reads `completed` (issue 12)."""

from __future__ import annotations

import time
from datetime import timedelta

import optuna
import pytest
from fastapi.testclient import TestClient

from api.db.migrate import upgrade
from api.main import create_app
from api.settings import Settings
from tests._api_support import (
    TINY_SPACE,
    LiveServer,
    drain,
    new_token,
    pg_schema_db,
    sqlite_db,
    trial_template,
)
from tuner.asktell.batch_commit import BatchCommitter
from tuner.asktell.expiry import _utcnow, expire_stale_trials, study_done
from tuner.asktell.operations import CreateTrial, FinishTrial, Heartbeat
from tuner.client import ConflictError, TunerClient
from tuner.storage.rdb import open_storage
from tuner.study.attrs import TrialAttr


def test_a_sweep_expires_only_silent_trials_once_and_a_late_finish_is_refused(rdb_url):
    storage = open_storage(rdb_url)
    sid = storage.get_study_id_from_name(optuna.create_study(study_name="exp", storage=storage).study_name)
    committer = BatchCommitter(storage)
    try:
        (silent, _), (beating, _), (told, _) = committer.commit([CreateTrial(sid, trial_template(float(i))) for i in range(3)])
        time.sleep(0.02)
        cutoff = _utcnow()  # after the asks, before the heartbeat
        time.sleep(0.02)
        committer.commit([Heartbeat(beating)])
        committer.commit([FinishTrial(told, optuna.trial.TrialState.COMPLETE, [1.0], {TrialAttr.RESULT: {"status": "ok"}})])
        now = cutoff + timedelta(seconds=60)
        first = expire_stale_trials(storage, sid, 60, now=now)
        assert [t.number for t in first] == [0]  # not the trial with a fresh heartbeat, not the told one
        assert expire_stale_trials(storage, sid, 60, now=now) == []  # a second sweeper finds nothing to do
        stored = storage.get_trial(silent)
        assert stored.state.name == "FAIL"
        assert stored.user_attrs[TrialAttr.RESULT]["status"] == "failed"
        assert "trial_timeout_s" in stored.user_attrs[TrialAttr.RESULT]["reason"]
        assert stored.user_attrs[TrialAttr.EXPIRED]["timeout_s"] == 60
        assert storage.get_trial(beating).state.name == "RUNNING"
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # the late tell loses
            committer.commit([FinishTrial(silent, optuna.trial.TrialState.COMPLETE, [2.0])])
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # and so does a late heartbeat
            committer.commit([Heartbeat(silent)])
        assert not study_done(storage, sid, 3)  # one still running
        committer.commit([FinishTrial(beating, optuna.trial.TrialState.FAIL, None, {TrialAttr.RESULT: {"status": "failed"}})])
        assert study_done(storage, sid, 3) and not study_done(storage, sid, 4)
    finally:
        committer.close()


def test_told_n_trials_complete_the_study_at_once_and_the_dashboard_shows_only_its_own(tmp_path):
    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False, writer_process=False, sampler_process=False))
    headers = {"Authorization": f"Bearer {new_token(url)}"}
    with TestClient(app) as http:
        body = {"name": "done", "space": TINY_SPACE, "run": False, "n_trials": 2, "sampler": "random", "objectives": ["val_loss"]}
        assert http.post("/api/v1/studies", json=body, headers=headers).status_code == 201
        for _ in range(2):
            number = http.post("/api/v1/studies/done/ask", headers=headers).json()["trial_number"]
            assert http.get("/api/v1/studies/done", headers=headers).json()["state"] == "ask_tell"
            r = http.post(f"/api/v1/studies/done/trials/{number}/tell", json={"values": [1.0]}, headers=headers)
            assert r.status_code == 200, r.text
        study = http.get("/api/v1/studies/done", headers=headers).json()
        assert study["state"] == "completed" and study["progress"]["complete"] == 2
        refused = http.post(f"/api/v1/studies/done/trials/{number}/heartbeat", headers=headers)
        assert refused.status_code == 409 and "already finished" in refused.text
        # the dashboard's data: the study's own parameters and objective, nothing unmeasured
        summary = http.get("/api/v1/dashboard/studies/done", headers=headers).json()
        assert summary["state"] == "completed" and summary["measured"] is False
        assert summary["space_params"] == sorted(TINY_SPACE["params"]) == sorted(summary["best"]["params"])
        assert summary["trial_timeout_s"] == 3600
        table = http.get("/api/v1/dashboard/studies/done/trials", headers=headers).json()
        labels = [c["label"] for c in table["columns"]]
        assert labels == ["#", "status", "val_loss", "duration (s)", *sorted(TINY_SPACE["params"])]  # no empty memory/step-time columns


#: long enough that a loaded machine's slow HTTP calls never expire the trials told at once
TIMEOUT_S = 3.0


@pytest.mark.postgres
def test_a_silent_trial_expires_on_any_replica_and_its_late_tell_gets_a_clear_409(monkeypatch):
    """Two servers on one PostgreSQL database (replicas): a real `tuner serve` process and
    the same app in this process, both sweeping every 0.2 s; SQLite's side is the engine
    test above and the in-process one."""
    monkeypatch.setenv("TUNER_TRIAL_SWEEP_INTERVAL_S", "0.2")
    with pg_schema_db() as url:
        upgrade(url)
        token = new_token(url)
        server = LiveServer(url, "--no-run").start()
        output = drain(server)
        # its writer on a thread (the served one has it in a child process): both modes meet
        replica = create_app(Settings(storage=url, run_studies=False, writer_process=False, sampler_process=False))
        try:
            with TestClient(replica) as http:
                first, other = TunerClient(server.base, token), TunerClient("http://testserver", token, transport=http._transport)
                _silent_trial_scenario(first, other, url)
        except Exception:
            print(b"".join(output).decode(errors="replace")[-4000:])
            raise
        finally:
            server.stop()


def _silent_trial_scenario(first: TunerClient, last: TunerClient, url: str) -> None:
    study = first.create_study("silent", TINY_SPACE, run=False, n_trials=4, sampler="random", trial_timeout_s=TIMEOUT_S)
    on_other = last.study("silent")
    # one pair through the other server first: its first request loads its copy of the
    # study and starts its writer, seconds on a busy machine, which must not count
    # against the trials below
    with on_other.ask() as warm:
        warm.tell(0.5)
    told = study.ask()
    assert type(told)(on_other, told.number, told.config, told.params).tell(1.0) == "COMPLETE"  # told via the replica
    beating, silent = study.ask(), study.ask()
    beating_elsewhere = type(beating)(on_other, beating.number, beating.config, beating.params)
    # Signs of life through the replica until a sweep expires the silent trial. `beating`
    # was asked before `silent`: without its heartbeats the same sweep would have expired
    # it too, so it still running then is the heartbeats' doing (no race on timings).
    deadline = time.monotonic() + 10 * TIMEOUT_S
    while study.trial(silent.number).state == "RUNNING" and time.monotonic() < deadline:
        beating_elsewhere.heartbeat() if int(time.monotonic() * 4) % 2 else beating_elsewhere.report(1, 0.5)
        time.sleep(0.2)
    assert study.trial(silent.number).state == "FAIL"  # expired by a sweep
    assert study.trial(beating.number).state == "RUNNING"
    with pytest.raises(ConflictError) as late:
        silent.tell(2.0)  # through the server that handed it out (its hot copy had it running)
    assert late.value.status == 409
    assert "expired" in late.value.problems[0].problem and "trial_timeout_s" in late.value.problems[0].problem
    assert "ask for a new trial" in late.value.problems[0].fix
    assert study.info().state == "ask_tell"  # one trial still running
    assert beating.tell(3.0) == "COMPLETE"
    assert study.info().state == "completed"  # n_trials told or expired (3 told, 1 expired)
    stored = {t.number: t for t in optuna.load_study(study_name="silent", storage=url).trials}
    assert stored[silent.number].state.name == "FAIL" and TrialAttr.EXPIRED in stored[silent.number].user_attrs
