"""REST studies, auth, limits, catalog and error format, against a real SQLite database."""

from __future__ import annotations

import warnings

import optuna
import pytest
from fastapi.testclient import TestClient

from api.db.migrate import head_revision
from api.main import create_app
from api.settings import Settings
from tests._api_support import GPT_TABLE, REPLAY_SPACE, TINY_SPACE, new_token, sqlite_db

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def env(tmp_path):
    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False, max_page_size=5, max_body_bytes=4096, replay_tables={"gpt_124m": GPT_TABLE}))
    token = new_token(url)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}, url


def _create(client, headers, **body):
    payload = {"name": "s1", "space": TINY_SPACE, "run": False, "n_trials": 10} | body
    return client.post("/api/v1/studies", json=payload, headers=headers)


def test_mutations_need_a_valid_token_reads_do_not(env):
    client, headers, _ = env
    for missing in ({}, {"Authorization": "Bearer tnr_not-a-token"}, {"Authorization": "Basic abc"}):
        r = _create(client, missing)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["problems"][0]["field"] == "Authorization"
    assert _create(client, headers).status_code == 201
    assert client.post("/api/v1/studies/s1/stop").status_code == 401
    assert client.delete("/api/v1/studies/s1").status_code == 401
    assert client.post("/api/v1/studies/s1/ask").status_code == 401
    assert client.get("/api/v1/studies/s1").status_code == 200


@pytest.mark.parametrize("workload", ["os:system", "tuner.workloads.gpt:GPTWorkload", "../../etc/passwd", "tuner.workloads.gpt"])
def test_workload_given_as_module_or_file_path_is_rejected(env, workload):
    client, headers, url = env
    r = _create(client, headers, workload=workload, run=True)
    assert r.status_code == 422
    problem = next(p for p in r.json()["problems"] if p["field"] == "workload")
    assert problem["value"] == workload
    assert "replay" in problem["fix"]
    assert "s1" not in {s.study_name for s in optuna.get_all_study_summaries(url)}


def test_replay_table_must_be_a_registered_name_never_a_path(env):
    client, headers, _ = env
    r = _create(client, headers, workload="replay", workload_params={"table": str(GPT_TABLE)}, space=REPLAY_SPACE, run=True)
    assert r.status_code == 422
    [problem] = r.json()["problems"]
    assert problem["field"] == "workload_params.table" and problem["value"] == str(GPT_TABLE)
    assert "gpt_124m" in problem["fix"]
    r = _create(client, headers, workload="replay", workload_params={"table": "gpt_124m"}, space=REPLAY_SPACE, run=True)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["workload_params"]["table"] == str(GPT_TABLE)


def test_every_problem_is_reported_at_once_with_field_value_fix(env):
    client, headers, _ = env
    bad_space = {"name": "x", "params": {"micro_bach_size": {"type": "int", "low": 1, "high": 8}}}
    r = _create(client, headers, name="ok-name", space=bad_space, sampler="annealing", objectives=["speed"])
    assert r.status_code == 422
    fields = {p["field"]: p for p in r.json()["problems"]}
    assert {"params.micro_bach_size", "sampler", "objectives"} <= set(fields)
    assert "micro_batch_size" in fields["params.micro_bach_size"]["fix"]
    assert fields["sampler"]["value"] == "annealing"
    r = _create(client, headers, name="../evil")
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "name"


def test_yaml_space_text_and_duplicate_name_conflict(env):
    client, headers, _ = env
    text = "name: t\nparams:\n  micro_batch_size: {type: int, low: 1, high: 8}\n"
    assert _create(client, headers, space=text).status_code == 201
    r = _create(client, headers, space=text)
    assert r.status_code == 409 and r.json()["problems"][0]["field"] == "name"
    r = _create(client, headers, name="s2", space="params: [unclosed")
    assert r.status_code == 422 and "YAML" in r.json()["problems"][0]["problem"]


def test_body_and_page_limits(env):
    client, headers, _ = env
    r = _create(client, headers, space={"name": "x", "description": "y" * 5000, "params": {}})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    for i in range(7):
        assert _create(client, headers, name=f"p{i}").status_code == 201
    r = client.get("/api/v1/studies?limit=6")
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "limit"
    page = client.get("/api/v1/studies?limit=5&offset=5").json()
    assert page["total"] == 7 and [s["name"] for s in page["items"]] == ["p5", "p6"]
    page = client.get("/api/v1/studies?limit=2&offset=1").json()  # a page that is not the tail: the limit cuts it
    assert (page["total"], page["offset"], page["limit"], [s["name"] for s in page["items"]]) == (7, 1, 2, ["p1", "p2"])


def test_list_filters_and_cli_created_study_is_visible(env):
    client, headers, url = env
    _create(client, headers, name="a1")
    _create(client, headers, name="r1", workload="replay", workload_params={"table": "gpt_124m"}, space=REPLAY_SPACE, run=True)
    # A study made by plain Optuna / the CLI in the same database shows up too.
    plain = optuna.create_study(study_name="from-cli", storage=url, direction="maximize")
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    names = {s["name"]: s for s in client.get("/api/v1/studies").json()["items"]}
    assert {"a1", "r1", "from-cli"} <= set(names)
    assert names["from-cli"]["mode"] == "cli" and names["from-cli"]["progress"]["complete"] == 3
    assert [s["name"] for s in client.get("/api/v1/studies?workload=replay").json()["items"]] == ["r1"]
    assert [s["name"] for s in client.get("/api/v1/studies?state=queued").json()["items"]] == ["r1"]
    assert client.get("/api/v1/studies?state=bogus").status_code == 422
    detail = client.get("/api/v1/studies/from-cli").json()
    assert detail["progress"]["total"] == 3


def test_stop_resume_delete_ask_tell_study(env):
    client, headers, url = env
    _create(client, headers)
    assert client.post("/api/v1/studies/s1/ask", headers=headers).status_code == 200
    assert client.post("/api/v1/studies/s1/stop", headers=headers).json()["state"] == "stopped"
    r = client.post("/api/v1/studies/s1/ask", headers=headers)
    assert r.status_code == 409 and "resume" in r.json()["problems"][0]["fix"]
    assert client.post("/api/v1/studies/s1/resume", headers=headers).json()["state"] == "ask_tell"
    assert client.post("/api/v1/studies/s1/ask", headers=headers).json()["trial_number"] == 1
    assert client.delete("/api/v1/studies/s1", headers=headers).status_code == 204
    assert client.get("/api/v1/studies/s1").status_code == 404
    assert "s1" not in {s.study_name for s in optuna.get_all_study_summaries(url)}


def test_catalog_health_readiness_and_space_validation(env):
    client, _headers, url = env
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    # issue 16: anonymous callers learn up/down only; the revision is for admin tokens
    assert client.get("/api/v1/ready").json() == {"ready": True}
    admin = {"Authorization": f"Bearer {new_token(url, scopes={'admin'})}"}
    ready = client.get("/api/v1/ready", headers=admin).json()
    assert ready["ready"] is True and ready["schema_revision"] == head_revision()  # was "0002" until revision 0003
    workloads = {w["name"]: w for w in client.get("/api/v1/workloads").json()}
    assert {"gpt", "recsys", "replay"} <= set(workloads)
    assert workloads["replay"]["replay_tables"] == ["gpt_124m"]
    assert any(p["name"] == "table" for p in workloads["replay"]["params"])
    result = client.post("/api/v1/spaces/validate", json={"space": {"name": "x", "params": {"precision": {"type": "categorical", "choices": ["fp8"]}, "nope": 1}}}).json()
    assert result["valid"] is False and {p["field"].split(".")[1] for p in result["problems"]} >= {"precision", "nope"}
    valid = client.post("/api/v1/spaces/validate", json={"space": TINY_SPACE}).json()
    assert valid["valid"] is True and valid["problems"] == [] and valid["space"]["name"] == TINY_SPACE["name"]  # the parsed space
    # one workload by name: the list's entry (replay with its tables); an unknown name is a 404 naming the choices
    assert client.get("/api/v1/workloads/replay").json() == workloads["replay"]
    assert client.get("/api/v1/workloads/gpt").json() == workloads["gpt"] and workloads["gpt"]["replay_tables"] is None
    r = client.get("/api/v1/workloads/nope")
    [problem] = r.json()["problems"]
    assert r.status_code == 404 and (problem["field"], problem["value"]) == ("name", "nope")
    assert problem["fix"] == "use one of: " + ", ".join(sorted(workloads)) and r.json()["detail"] == "no workload 'nope'"
    hw = client.get("/api/v1/hardware").json()
    assert hw["profile"] and hw["host"]
    assert client.get("/api/v1/hardware").json()["probed_at"] == hw["probed_at"]  # stored, not re-probed


def test_the_spec_is_read_from_its_one_stored_copy_the_optuna_attr(env):
    """A CLI resume rewrites the attr (n_trials may change); the service shows that, not a stale copy."""
    import dataclasses

    from tuner.study.attrs import StudyAttr
    from tuner.study.spec import StudySpec

    client, headers, url = env
    assert _create(client, headers, n_trials=10).status_code == 201
    study = optuna.load_study(study_name="s1", storage=url)
    spec = StudySpec.from_dict(study.user_attrs[StudyAttr.SPEC])
    assert spec.n_trials == 10
    study.set_user_attr(StudyAttr.SPEC, dataclasses.replace(spec, n_trials=25).to_dict())
    read = client.get("/api/v1/studies/s1").json()
    assert read["progress"]["n_trials"] == 25 and read["spec"]["n_trials"] == 25
    assert client.get("/api/v1/studies").json()["items"][0]["progress"]["n_trials"] == 25
    # a plain Optuna study in the same database lists without a spec, and without an error
    optuna.create_study(study_name="plain", storage=url)
    plain = client.get("/api/v1/studies/plain").json()
    assert plain["mode"] == "cli" and plain["state"] == "external" and plain["spec"] == {} and plain["sampler"] is None


def test_a_throughput_study_whose_space_excludes_a_held_knob_is_refused_with_the_fix(env):
    client, headers, url = env
    space = {"name": "short", "params": {"max_sequence_length": {"type": "categorical", "choices": [64]}}}
    r = _create(client, headers, workload="gpt", run=True, space=space)
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["field"] == "space.params.max_sequence_length"
    assert problem["value"] == {"type": "categorical", "choices": [64]}
    assert "free_knobs: [max_sequence_length]" in problem["fix"]
    assert "s1" not in {s.study_name for s in optuna.get_all_study_summaries(url)}
    r = _create(client, headers, workload="gpt", run=True, space=space | {"free_knobs": ["seq"]})
    assert r.status_code == 422 and r.json()["problems"][0]["value"] == "seq"
    r = _create(client, headers, workload="gpt", run=True, space=space | {"free_knobs": ["max_sequence_length"]})
    assert r.status_code == 201, r.text
