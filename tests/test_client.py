"""The Python client against a real `tuner serve` subprocess on SQLite: background runs of
the replay workload, ask/tell loops, stop/resume, and a server killed mid-study."""

from __future__ import annotations

import time

import optuna
import pytest

from tests._api_support import REPLAY_SPACE, TINY_SPACE, LiveServer, new_token, sqlite_db
from tuner.client import AuthError, ConflictError, Study, TunerClient
from tuner.errors import StudyNotFoundError, TrialPruned, ValidationError
from tuner.types import TrialConfig


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # One server for the module: starting one costs seconds; every test uses its own study.
    url = sqlite_db(tmp_path_factory.mktemp("served"))
    server = LiveServer(url).start()
    try:
        with TunerClient(server.base, token=new_token(url)) as client:
            yield client, server, url
    finally:
        server.stop()


def _replay(client, name, n_trials, **kw):
    return client.create_study(
        name, space=REPLAY_SPACE, workload="replay", workload_params={"table": "gpt_124m"},
        n_trials=n_trials, sampler="tpe", use_generator=False, **kw,
    )


def _counted(url, name):
    trials = optuna.load_study(study_name=name, storage=url).trials
    return [t for t in trials if t.state.is_finished() and t.user_attrs.get("tuner.kind", "trial") == "trial"]


def test_background_study_runs_and_best_comes_back(served):
    client, _, url = served
    study = _replay(client, "bg", 12)
    info = study.wait(timeout=120, poll_s=0.2)
    assert info.state == "completed", info
    assert info.progress["complete"] + info.progress["failed"] >= 12
    best = study.best_config()
    assert isinstance(best, TrialConfig)
    # The best the API reports is the best measured in the database.
    measured = [t for t in _counted(url, "bg") if t.state.name == "COMPLETE"]
    top = max(measured, key=lambda t: t.user_attrs["tuner.result"]["items_per_s"])
    assert best.to_dict() == top.user_attrs["tuner.config"]
    assert study.pareto()[0].config == best  # single objective: the front is the best
    assert "micro_batch_size: " in study.export("yaml")
    trials = study.trials(sort="items_per_s", descending=True)
    assert trials[0].metrics["items_per_s"] == top.user_attrs["tuner.result"]["items_per_s"]


def test_ask_tell_loop_with_pareto_front(served):
    client, _, _url = served
    study = client.create_study("mo", space=TINY_SPACE, run=False, n_trials=12, objectives=["throughput", "val_loss"], sampler="random")
    points = {}
    for _ in range(12):
        with study.ask() as trial:
            mbs = trial.config.micro_batch_size
            # bigger batches are faster but (here) generalise worse: a real trade-off
            values = {"throughput": float(mbs), "val_loss": 1.0 + mbs / 64 + (0.3 if trial.config.precision == "bf16" else 0.0)}
            trial.tell(values, metrics={"steps": 3.0})
            points[trial.number] = (values["throughput"], values["val_loss"])
    front = {p.number for p in study.pareto()}
    expected = {
        n for n, (t, v) in points.items()
        if not any(t2 >= t and v2 <= v and (t2, v2) != (t, v) for t2, v2 in points.values())
    }
    assert front == expected and front
    with pytest.raises(ConflictError):
        study.ask()  # n_trials reached


def test_with_block_tells_failures_and_pruning(served):
    client, _, url = served
    study = client.create_study("fails", space=TINY_SPACE, run=False, n_trials=5)
    with pytest.raises(RuntimeError), study.ask():
        raise RuntimeError("CUDA error: out of cheese")
    with study.ask():
        raise TrialPruned()
    stored = optuna.load_study(study_name="fails", storage=url).trials
    assert [t.state.name for t in stored] == ["FAIL", "PRUNED"]
    assert "out of cheese" in study.trial(0).reason


def test_same_validation_errors_as_the_server(served):
    client, server, _ = served
    with pytest.raises(ValidationError) as err:
        client.create_study("bad", space={"name": "x", "params": {"precison": {"type": "bool"}}}, workload="os:system")
    fields = {p.field for p in err.value.problems}
    assert {"workload", "params.precison"} <= fields
    with pytest.raises(StudyNotFoundError):
        client.study("missing")
    with TunerClient(server.base) as anonymous, pytest.raises(AuthError):
        anonymous.create_study("x", space=TINY_SPACE, run=False)
    assert client.validate_space({"name": "x", "params": {"nope": 1}})[0].field.endswith("nope")


def test_stop_then_resume_finishes_the_study(served):
    client, _, url = served
    study = _replay(client, "sr", 25)
    deadline = time.monotonic() + 60
    while study.info().progress["complete"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    study.stop()
    info = study.wait(timeout=60, poll_s=0.1)
    assert info.state == "stopped"
    frozen = len(_counted(url, "sr"))
    assert frozen < 25
    time.sleep(0.5)
    assert len(_counted(url, "sr")) == frozen  # stopped means no new trials
    study.resume()
    assert study.wait(timeout=120, poll_s=0.2).state == "completed"
    assert len(_counted(url, "sr")) == 25


def test_server_killed_mid_study_resumes_with_no_result_lost(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url)
    server = LiveServer(url, grace=1.0).start()
    try:
        with TunerClient(server.base, token=token) as client:
            study = _replay(client, "crash", 30)
            deadline = time.monotonic() + 60
            while study.info().progress["complete"] < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
        server.kill()  # SIGKILL: no shutdown hook runs
        before = {t.number: (t.state.name, t.values) for t in optuna.load_study(study_name="crash", storage=url).trials}
        finished_before = {n: v for n, v in before.items() if v[0] in ("COMPLETE", "PRUNED", "FAIL")}
        running_before = [n for n, v in before.items() if v[0] == "RUNNING"]
        assert len(_counted(url, "crash")) < 30, "the study finished before the kill; raise n_trials"
        server = LiveServer(url, grace=1.0).start()
        with TunerClient(server.base, token=token) as client:
            info = client.study("crash").wait(timeout=180, poll_s=0.2)
        assert info.state == "completed"
        after = {t.number: t for t in optuna.load_study(study_name="crash", storage=url).trials}
        for number, (state, values) in finished_before.items():
            assert after[number].state.name == state and after[number].values == values  # nothing lost
        for number in running_before:  # abandoned by the dead server: failed, then retried
            assert after[number].state.name == "FAIL"
            assert after[number].user_attrs["tuner.kind"] == "abandoned"
        assert len(_counted(url, "crash")) == 30
    finally:
        server.stop()


def test_token_management_scopes_and_revocation(served):
    from tuner.client import TokenNotFoundError

    client, server, url = served
    with TunerClient(server.base, token=new_token(url, "client-admin", scopes={"admin"})) as admin:
        made = admin.create_token("client-worker", scopes=["ask_tell", "read"], owner="team-a")
        assert (made.name, made.owner, made.scopes, made.revoked_at) == ("client-worker", "team-a", ("ask_tell", "read"), None)
        assert made.token.startswith("tnr_") and made.token not in repr(made)
        listed = {t.name: t for t in admin.tokens()}
        assert listed["client-worker"].scopes == ("ask_tell", "read") and listed["client-worker"].created_at == made.created_at
        default = admin.create_token("client-default")
        assert set(default.scopes) == {"read", "ask_tell", "create"} and default.owner == "client-default"
        with TunerClient(server.base, token=made.token) as worker:
            client.create_study("tokens-study", space=TINY_SPACE, run=False, n_trials=5)
            with worker.study("tokens-study").ask() as trial:  # its scopes let it ask and tell
                trial.tell({"throughput": 1.0})
            with pytest.raises(AuthError) as refused:  # ... but not create
                worker.create_study("not-allowed", space=TINY_SPACE, run=False)
            assert refused.value.status == 403 and "lacks scope create" in refused.value.detail
            with pytest.raises(AuthError) as not_admin:
                worker.tokens()
            assert not_admin.value.status == 403
            admin.revoke_token("client-worker")
            with pytest.raises(AuthError) as revoked:  # at once on this server
                worker.study("tokens-study").ask()
            assert revoked.value.status == 401 and "revoked" in revoked.value.detail
        assert {t.name: t for t in admin.tokens()}["client-worker"].revoked_at is not None
        with pytest.raises(TokenNotFoundError) as gone:
            admin.revoke_token("client-worker")
        assert gone.value.status == 404 and gone.value.problems[0].field == "name"
        with pytest.raises(ValidationError):
            admin.create_token("bad name with spaces")


def test_gain_report_is_the_one_tuner_best_prints(served):
    from tuner.cli.cmd_best import best_document

    client, _, url = served
    study = _replay(client, "gain-study", 6)
    assert study.wait(timeout=120, poll_s=0.2).state == "completed"
    report = study.gain_report()
    expected = best_document(url, "gain-study")["gain_report"]
    assert report.raw == expected
    assert (report.value, report.source, report.figure, report.text) == (expected["value"], expected["source"], expected["figure"], expected["text"])
    # the server's runs confirm the best back to back (pairs) by default
    assert report.source == "confirmation" and report.pairs and report.ratio_range and report.figure.startswith("x")
    with pytest.raises(StudyNotFoundError):
        Study(client, "no-such-study").gain_report()
