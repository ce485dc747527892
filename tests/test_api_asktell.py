"""Ask/report/tell through REST on real SQLite: the hot in-memory path must leave the
database complete, readable by `optuna.load_study` and by the real optuna-dashboard."""

from __future__ import annotations

import io
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import TINY_SPACE, new_token, pg_schema_db, sqlite_db, trial_template
from tuner.study.recovery import recover_abandoned_trials


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One app for the module's tests: each works on a study of its own (`_study` names it
    afresh), and the server's sampler and writer processes start once, not once per test."""
    url = sqlite_db(tmp_path_factory.mktemp("asktell"))
    app = create_app(Settings(storage=url, run_studies=False))
    token = new_token(url)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}, url


def _study(client, headers, **body):
    payload = {"name": f"at-{uuid.uuid4().hex[:12]}", "space": TINY_SPACE, "run": False, "n_trials": 40, "sampler": "tpe", "budget": {"max_steps": 5, "warmup_steps": 0}} | body
    r = client.post("/api/v1/studies", json=payload, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["name"]


def _dashboard_get(url: str, path: str) -> dict:
    from optuna_dashboard import wsgi

    app = wsgi(url)
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_ask_report_tell_round_trip_is_in_the_database(env):
    client, headers, url = env
    name = _study(client, headers)
    told = {}
    for i in range(6):
        ask = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()
        n, config = ask["trial_number"], ask["config"]
        assert n == i and config["micro_batch_size"] == ask["params"]["micro_batch_size"]
        assert config["learning_rate"] == 3e-4  # knobs outside the space keep the default
        for step in range(3):
            r = client.post(f"/api/v1/studies/{name}/trials/{n}/report", json={"step": step, "value": 10.0 * step + i}, headers=headers)
            assert r.status_code == 200 and isinstance(r.json()["prune"], bool)
        value = config["micro_batch_size"] * (2.0 if config["precision"] == "bf16" else 1.0)
        r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": {"throughput": value}, "metrics": {"peak_gb": float(i)}}, headers=headers)
        assert r.json() == {"trial_number": n, "state": "COMPLETE"}
        told[n] = (ask["params"], value)
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 6
    for trial in study.trials:
        params, value = told[trial.number]
        assert trial.params == params and trial.value == value
        assert trial.intermediate_values == {0: float(trial.number), 1: 10.0 + trial.number, 2: 20.0 + trial.number}
        assert trial.user_attrs["tuner.result"]["metrics"] == {"peak_gb": float(trial.number)}
    assert study.best_value == max(v for _, v in told.values())
    # The REST read side agrees, including sorting by a metric and best so far.
    detail = client.get(f"/api/v1/studies/{name}").json()
    assert detail["best"]["values"] == [study.best_value] and detail["progress"]["complete"] == 6
    by_peak = client.get(f"/api/v1/studies/{name}/trials?sort=peak_gb&order=desc").json()["items"]
    assert [t["number"] for t in by_peak] == [5, 4, 3, 2, 1, 0]
    one = client.get(f"/api/v1/studies/{name}/trials/2").json()
    assert one["intermediate_values"] == {"0": 2.0, "1": 12.0, "2": 22.0} and one["status"] == "ok"
    # optuna-dashboard (the real package) reads the same database.
    studies = _dashboard_get(url, "/api/studies")["study_summaries"]
    [summary] = [s for s in studies if s["study_name"] == name]
    detail = _dashboard_get(url, f"/api/studies/{summary['study_id']}")
    assert len(detail["trials"]) == 6 and detail["best_trials"][0]["values"] == [study.best_value]


def test_tell_errors_and_pruning(env):
    client, headers, url = env
    name = _study(client, headers, pruner="median")
    for _ in range(4):  # four trials that were good at step 1
        n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
        assert client.post(f"/api/v1/studies/{name}/trials/{n}/report", json={"step": 1, "value": 100.0}, headers=headers).json() == {"prune": False}
        client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [100.0]}, headers=headers)
    n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
    # throughput is maximised: far below the median at the same step must be pruned
    assert client.post(f"/api/v1/studies/{name}/trials/{n}/report", json={"step": 1, "value": 1.0}, headers=headers).json() == {"prune": True}
    r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [1.0, 2.0]}, headers=headers)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "values"
    r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": {"val_loss": 1.0}}, headers=headers)
    assert {p["field"] for p in r.json()["problems"]} == {"values.val_loss", "values.throughput"}
    assert client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"status": "pruned"}, headers=headers).json()["state"] == "PRUNED"
    # issue 16: the same tell again is a retry (same answer); another outcome conflicts
    r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"status": "pruned"}, headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "PRUNED"
    r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"status": "failed"}, headers=headers)
    assert r.status_code == 409
    assert client.post(f"/api/v1/studies/{name}/trials/99/tell", json={"status": "failed"}, headers=headers).status_code == 404
    assert optuna.load_study(study_name=name, storage=url).trials[n].state == optuna.trial.TrialState.PRUNED


def test_concurrent_clients_get_distinct_trials_and_nothing_is_lost(env):
    client, headers, url = env
    name = _study(client, headers, n_trials=48, sampler="random")
    lock = threading.Lock()
    seen: list[int] = []

    def worker(_: int) -> None:
        for _ in range(6):
            n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
            r = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [float(n)]}, headers=headers)
            assert r.status_code == 200
            with lock:
                seen.append(n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert sorted(seen) == list(range(48))
    stored = optuna.load_study(study_name=name, storage=url).trials
    assert [(t.number, t.value) for t in stored] == [(i, float(i)) for i in range(48)]
    r = client.post(f"/api/v1/studies/{name}/ask", headers=headers)
    # refused either by the budget or, once the last tell marked the study completed (ask/tell
    # completion, issue 12), by its state: which of the two answers first is a race
    assert r.status_code == 409 and r.json()["problems"][0]["field"] in ("n_trials", "state"), r.json()


def test_hot_copy_reloads_from_the_database_after_a_restart(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(Settings(storage=url, run_studies=False))) as client:
        name = _study(client, headers)
        n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
    # a new server process: the trial asked before the restart can still be told
    with TestClient(create_app(Settings(storage=url, run_studies=False))) as client:
        assert client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [5.0]}, headers=headers).json()["state"] == "COMPLETE"
        assert client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"] == n + 1


def test_recovery_fails_running_trials_and_requeues_their_config(tmp_path):
    url = sqlite_db(tmp_path)
    study = optuna.create_study(study_name="r", storage=url)
    done = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    stale = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert recover_abandoned_trials(optuna.storages.RDBStorage(url), "r") == 1
    trials = optuna.load_study(study_name="r", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert trials[1].user_attrs["tuner.kind"] == "abandoned" and "heartbeat" in trials[1].user_attrs["tuner.result"]["reason"]
    assert trials[2].params == {} and trials[2].system_attrs["fixed_params"] == {"x": stale.params["x"]}
    assert trials[2].user_attrs["tuner.retry_of"] == 1


# -- the write-behind writer and the TPE speed-up, below the HTTP layer ------------------
def _template(x: float) -> optuna.trial.FrozenTrial:
    return trial_template(x, cfg={"x": x})


def test_writer_batches_are_one_transaction_and_a_stale_op_fails_alone(rdb_url):
    from concurrent.futures import Future

    from tuner.asktell.trial_writer import CreateTrial, FinishTrial, SetIntermediate, TrialWriter

    study = optuna.create_study(study_name="w", storage=rdb_url, direction="maximize")
    done = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
    study.tell(done, 1.0)  # trial 0 exists and is finished: new numbers continue at 1
    storage = optuna.storages.RDBStorage(rdb_url)
    writer = TrialWriter(storage)
    try:
        created = writer._commit([CreateTrial(study._study_id, _template(float(x))) for x in (2, 3, 4)])
        assert [number for _, number in created] == [1, 2, 3]
        (id1, _), (id2, _), (id3, _) = created
        batch = [
            # "cfg" exists since the create: a finish replaces an attr (upsert), never duplicates it
            FinishTrial(id1, optuna.trial.TrialState.COMPLETE, [5.0], {"tuner.result": {"status": "ok"}, "cfg": {"x": 2.5}}),
            SetIntermediate(id2, 0, 0.5),
            SetIntermediate(id2, 0, 0.25),  # the later report of the same step wins
            FinishTrial(done._trial_id, optuna.trial.TrialState.COMPLETE, [9.0]),  # already finished
            FinishTrial(id3, optuna.trial.TrialState.PRUNED, None),
        ]
        futures = [Future() for _ in batch]
        writer._run_batch(list(zip(batch, futures, strict=True)))
        errors = [f.exception() for f in futures]
        assert [e is None for e in errors] == [True, True, True, False, True]
        assert isinstance(errors[3], optuna.exceptions.UpdateFinishedTrialError)
    finally:
        writer.close()
    trials = optuna.load_study(study_name="w", storage=rdb_url).trials
    assert [(t.number, t.state.name, t.values) for t in trials] == [
        (0, "COMPLETE", [1.0]), (1, "COMPLETE", [5.0]), (2, "RUNNING", None), (3, "PRUNED", None)
    ]
    assert [t.params for t in trials[1:]] == [{"x": 2.0}, {"x": 3.0}, {"x": 4.0}]
    assert trials[1].user_attrs == {"tuner.kind": "trial", "cfg": {"x": 2.5}, "tuner.result": {"status": "ok"}}
    assert trials[2].intermediate_values == {0: 0.25} and trials[1].datetime_complete is not None


def test_tpe_speedup_computes_the_same_log_ndtr_as_optuna():
    import numpy as np
    from optuna.samplers._tpe import _truncnorm

    from tuner.asktell import tpe_speedup

    stock = np.frompyfunc(_truncnorm._log_ndtr_single, 1, 1)  # Optuna's own scalar code
    assert tpe_speedup.install()
    x = np.concatenate([np.linspace(-60, 60, 20001), -np.logspace(-8, 3, 500), np.logspace(-8, 3, 500)])
    fast = _truncnorm._log_ndtr(x)
    assert fast.shape == x.shape and np.all(np.isfinite(fast))
    # atol: for a > 37 both are 0 up to a denormal (~1e-311) that scipy flushes to 0
    np.testing.assert_allclose(fast, stock(x).astype(float), rtol=1e-6, atol=1e-300)


def test_asks_are_answered_from_a_trial_sampled_ahead_and_n_trials_still_holds(env):
    client, headers, url = env
    name = _study(client, headers, n_trials=5)
    for i in range(5):
        ask = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()
        assert ask["trial_number"] == i
        client.post(f"/api/v1/studies/{name}/trials/{i}/tell", json={"values": [float(i)]}, headers=headers)
    hot = client.app.state.ctx.asktell.cached(name)
    r = client.post(f"/api/v1/studies/{name}/ask", headers=headers)
    assert r.status_code == 409 and r.json()["problems"][0]["field"] == "n_trials"
    stored = optuna.load_study(study_name=name, storage=url).trials
    assert [(t.number, t.state.name, t.value) for t in stored] == [(i, "COMPLETE", float(i)) for i in range(5)]
    # every ask after the first found its trial ready (prepared right after the tell)
    assert hot.handed_out_ready == 4
    # nothing was prepared past n_trials: the hot copy holds exactly the 5 told trials
    assert [t.state.name for t in hot.memory.trials] == ["COMPLETE"] * 5


def test_writer_can_commit_without_waiting_for_the_wal_flush_on_postgresql():
    from sqlalchemy import text

    from tuner.asktell.trial_writer import CreateTrial, TrialWriter, pg_synchronous_commit
    from tuner.errors import ValidationError

    assert pg_synchronous_commit("on") and not pg_synchronous_commit(" OFF ")
    with pytest.raises(ValidationError, match="TUNER_PG_SYNCHRONOUS_COMMIT"):
        pg_synchronous_commit("maybe")
    with pg_schema_db() as url:
        study = optuna.create_study(study_name="a", storage=url)
        storage = optuna.storages.RDBStorage(url)
        writer = TrialWriter(storage, synchronous_commit=False)
        try:
            [(_, number)] = writer._commit([CreateTrial(study._study_id, _template(1.0))])
            # the connection the writer kept and committed through
            assert writer._conn.execute(text("SHOW synchronous_commit")).scalar_one() == "off"
            with storage.engine.connect() as conn:  # the rest of the service stays durable
                assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
        finally:
            writer.close()
        durable = TrialWriter(storage)  # the default: the writer's commits wait for the WAL flush
        try:
            durable._commit([CreateTrial(study._study_id, _template(2.0))])
            assert durable._conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
        finally:
            durable.close()
        assert number == 0 and optuna.load_study(study_name="a", storage=url).trials[0].params == {"x": 1.0}


def test_concurrent_first_asks_load_the_study_copy_once(tmp_path, monkeypatch):
    import asyncio

    import httpx

    from api.routes import studies as routes

    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False))
    headers = {"Authorization": f"Bearer {new_token(url)}"}
    name = _study(TestClient(app), headers, sampler="random")  # no lifespan: the app stays open
    other = _study(TestClient(app), headers, sampler="random")  # loaded at the same moment, on its own
    loads = []
    real_load = routes._load_hot

    def counting_load(ctx, study_name):  # type: ignore[no-untyped-def]
        loads.append(study_name)
        return real_load(ctx, study_name)

    monkeypatch.setattr(routes, "_load_hot", counting_load)

    async def first_asks() -> list[tuple[str, int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as http:
            asks = [name] * 8 + [other] * 3
            answers = await asyncio.gather(*(http.post(f"/api/v1/studies/{s}/ask") for s in asks))
        return [(s, r.json()["trial_number"]) for s, r in zip(asks, answers, strict=True)]

    try:
        numbers = asyncio.run(first_asks())
    finally:
        app.state.ctx.close()
    assert sorted(n for s, n in numbers if s == name) == list(range(8))
    assert sorted(n for s, n in numbers if s == other) == list(range(3))  # never another study's copy
    assert sorted(loads) == sorted([name, other])  # one load per study served all its asks
    assert [len(optuna.load_study(study_name=s, storage=url).trials) for s in (name, other)] == [8, 3]


def test_a_trial_out_when_its_study_is_stopped_keeps_its_heartbeat_report_and_tell(env):
    """A stop refuses new asks only: a trial already handed out keeps its lease (heartbeat
    204, empty), its reports and its tell, so what it computed is not lost."""
    client, headers, _ = env
    name = _study(client, headers)
    n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
    assert client.post(f"/api/v1/studies/{name}/stop", headers=headers).status_code == 200
    refused = client.post(f"/api/v1/studies/{name}/ask", headers=headers)
    assert refused.status_code == 409
    assert refused.json()["problems"] == [{
        "field": "state", "value": "stopped", "problem": "does not accept new trials",
        "fix": f"resume it: POST /api/v1/studies/{name}/resume", "source": None,
    }]  # fmt: skip
    beat = client.post(f"/api/v1/studies/{name}/trials/{n}/heartbeat", headers=headers)
    assert (beat.status_code, beat.content) == (204, b"")
    assert client.post(f"/api/v1/studies/{name}/trials/{n}/report", json={"step": 1, "value": 1.0}, headers=headers).status_code == 200
    told = client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [1.0]}, headers=headers)
    assert (told.status_code, told.json()["state"]) == (200, "COMPLETE")


def test_best_raw_is_the_document_itself_with_its_media_type(env):
    """`?raw=true` answers the rendered document, not the JSON envelope: the same content
    the envelope carries, under the format's media type (json by default)."""
    client, headers, _ = env
    name = _study(client, headers)
    n = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
    client.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [2.0], "telemetry": {"gpu_util": 0.5}}, headers=headers)
    assert client.get(f"/api/v1/studies/{name}/trials/{n}", headers=headers).json()["telemetry"]["gpu_util"] == 0.5  # stored with the tell
    for fmt, media in (("json", "application/json"), ("yaml", "application/yaml")):
        query = "" if fmt == "json" else f"&format={fmt}"
        envelope = client.get(f"/api/v1/studies/{name}/best?raw=false{query}", headers=headers).json()
        raw = client.get(f"/api/v1/studies/{name}/best?raw=true{query}", headers=headers)
        assert raw.status_code == 200 and raw.headers["content-type"].startswith(media)
        assert envelope["format"] == fmt and raw.text == envelope["content"] != ""
    assert f"# study: {name}\n" in raw.text  # the yaml header names the study the config came from
    # one objective: the Pareto front is the best trial, exported the same way
    assert client.get(f"/api/v1/studies/{name}/pareto?raw=true&format=yaml", headers=headers).text == raw.text
    front = client.get(f"/api/v1/studies/{name}/pareto", headers=headers).json()
    best = client.get(f"/api/v1/studies/{name}/best", headers=headers).json()
    assert (front["study"], front["format"], front["content"]) == (name, "json", best["content"])
    # the trial listing filters by state: a second trial, still running, is not COMPLETE
    running = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"]
    listed = {s: [t["number"] for t in client.get(f"/api/v1/studies/{name}/trials?state={s}", headers=headers).json()["items"]] for s in ("COMPLETE", "RUNNING")}
    assert listed == {"COMPLETE": [n], "RUNNING": [running]}


def test_a_failed_tells_reason_is_kept_and_the_last_tell_completes_the_study(env):
    client, headers, _url = env
    name = _study(client, headers, n_trials=2)
    first, second = (client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["trial_number"] for _ in range(2))
    r = client.post(f"/api/v1/studies/{name}/trials/{first}/tell", json={"status": "failed", "reason": "CUDA OOM at step 3"}, headers=headers)
    assert r.json()["state"] == "FAIL"
    assert client.get(f"/api/v1/studies/{name}/trials/{first}", headers=headers).json()["reason"] == "CUDA OOM at step 3"
    assert client.get(f"/api/v1/studies/{name}", headers=headers).json()["state"] == "ask_tell"
    client.post(f"/api/v1/studies/{name}/trials/{second}/tell", json={"values": [1.0]}, headers=headers)
    study = client.get(f"/api/v1/studies/{name}", headers=headers).json()
    # the tell that finishes n_trials completes the study at once, not at the next sweep
    assert (study["state"], study["reason"]) == ("completed", "all 2 trials told or expired")


def test_a_study_whose_spec_attr_was_broken_answers_409_naming_the_study(env):
    client, headers, url = env
    name = _study(client, headers)
    optuna.load_study(study_name=name, storage=url).set_user_attr("tuner.spec", "not a spec")
    r = client.post(f"/api/v1/studies/{name}/ask", headers=headers)
    assert r.status_code == 409
    problem = r.json()["problems"][0]
    assert problem == {
        "field": "study", "value": name, "problem": "has no readable tuner.spec user attribute",
        "fix": "recreate the study (DELETE it, then POST it again)", "source": None,
    }  # fmt: skip


def test_ask_on_a_study_the_server_runs_is_409_naming_it(tmp_path):
    url = sqlite_db(tmp_path)
    headers = {"Authorization": f"Bearer {new_token(url)}"}
    with TestClient(create_app(Settings(storage=url, run_studies=False))) as client:
        payload = {"name": "served", "workload": "gpt", "space": TINY_SPACE, "run": True, "n_trials": 2, "budget": {"max_steps": 2, "warmup_steps": 0}}
        assert client.post("/api/v1/studies", json=payload, headers=headers).status_code == 201
        r = client.post("/api/v1/studies/served/ask", headers=headers)
    assert r.status_code == 409
    problem = r.json()["problems"][0]
    assert problem == {
        "field": "study", "value": "served", "problem": "runs its trials on the server (run: true)",
        "fix": "create a study with run: false for ask/tell", "source": None,
    }  # fmt: skip


def test_knobs_outside_the_space_keep_the_workloads_default_config(env):
    """An ask/tell study of a registered workload: what the space leaves out comes from that
    workload's default config, not from TrialConfig's generic defaults."""
    from tuner.types import TrialConfig
    from tuner.workloads import get_workload

    client, headers, _url = env
    name = _study(client, headers, workload="gpt")
    config = client.post(f"/api/v1/studies/{name}/ask", headers=headers).json()["config"]
    default = get_workload("gpt").default_config({})
    assert default.learning_rate != TrialConfig().learning_rate  # else this test could not tell them apart
    assert config["learning_rate"] == default.learning_rate and config["max_sequence_length"] == default.max_sequence_length


def test_an_ask_answers_the_users_own_hyperparameters(env):
    client, headers, _url = env
    space = {**TINY_SPACE, "hparams": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}}}
    ask = client.post(f"/api/v1/studies/{_study(client, headers, space=space)}/ask", headers=headers).json()
    assert set(ask["hparams"]) == {"dropout"} and 0.0 <= ask["hparams"]["dropout"] <= 0.5
    assert ask["params"]["dropout"] == ask["hparams"]["dropout"] and "dropout" not in ask["config"]
