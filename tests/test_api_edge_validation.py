"""Every bad number or device string is a 422 problem+json naming the field, never a 5xx.

The repros of issue 16: NaN, Infinity and 1e309 in JSON bodies (a 500 text/plain and a
reset connection before), seeds outside Optuna's range (accepted, then every ask a 500),
integers beyond int64 in offsets, limits, steps and trial numbers (an OverflowError into
SQLite), and device strings with anything after `cuda:N`.
"""

from __future__ import annotations

import json
import math
import uuid

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.problems import ApiProblem, json_safe, problem_response
from api.settings import Settings
from tests._api_support import GPT_TABLE, TINY_SPACE, LiveServer, new_token, sqlite_db
from tuner.errors import FieldProblem, ValidationError
from tuner.study.spec import StudySpec

INT64_MAX = 2**63 - 1
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One app and database for the module (a fresh one per test cost ~1-2 s each, 52 times):
    each test works on its own study names (`env`), so none sees another's studies."""
    url = sqlite_db(tmp_path_factory.mktemp("edge"))
    app = create_app(Settings(storage=url, run_studies=False, replay_tables={"gpt_124m": GPT_TABLE}))
    token = new_token(url)
    # raise_server_exceptions=False: a 500 must show up as a 500 here, not as a test error
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {token}"}


@pytest.fixture
def env(served):
    """(client, headers, a study name no other test uses)."""
    client, headers = served
    return client, headers, f"s-{uuid.uuid4().hex[:12]}"


def _study(name: str, **extra: object) -> dict:
    return {"name": name, "space": TINY_SPACE, "run": False, "n_trials": 10} | extra


def _raw(client, path: str, text: str, headers: dict):
    return client.post(path, content=text, headers=headers | {"content-type": "application/json"})


def _problem(response, field: str) -> dict:
    assert response.status_code == 422, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()  # valid JSON: the renderer never writes NaN or Infinity
    assert body["status"] == 422
    found = [p for p in body["problems"] if p["field"] == field]
    assert found, body["problems"]
    assert found[0]["fix"] and found[0]["problem"]
    return found[0]


def _ask(client, headers, name: str) -> int:
    asked = client.post(f"/api/v1/studies/{name}/ask", headers=headers)
    assert asked.status_code == 200, asked.text
    return asked.json()["trial_number"]


# -- NaN, Infinity, 1e309 --------------------------------------------------------------
@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_numbers_in_every_body_are_422(env, literal):
    client, headers, name = env
    assert client.post("/api/v1/studies", json=_study(name), headers=headers).status_code == 201
    number = _ask(client, headers, name)
    trial = f"/api/v1/studies/{name}/trials/{number}"
    refused = [f"{name}-{n}" for n in (2, 3, 4)]  # the names of the refused studies
    total = client.get("/api/v1/studies").json()["total"]
    shown = {"NaN": "NaN", "Infinity": "Infinity", "1e309": "Infinity", "-Infinity": "-Infinity", "-1e309": "-Infinity"}[literal]

    body = json.dumps(_study(refused[0])).replace('"n_trials": 10', f'"timeout_s": {literal}')
    assert _problem(_raw(client, "/api/v1/studies", body, headers), "timeout_s")["value"] == shown
    space = '{"name": "t", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": @}}}'.replace("@", literal)
    body = '{"name": "@name", "run": false, "n_trials": 5, "space": @}'.replace("@name", refused[1]).replace("@", space)
    assert _problem(_raw(client, "/api/v1/studies", body, headers), "space.params.micro_batch_size.high")["value"] == shown
    body = json.dumps(_study(refused[2], workload_params={"x": [1, "@"]})).replace('"@"', literal)
    assert _problem(_raw(client, "/api/v1/studies", body, headers), "workload_params.x[1]")["value"] == shown

    assert _problem(_raw(client, f"{trial}/report", '{"step": 1, "value": @}'.replace("@", literal), headers), "value")["value"] == shown
    assert _problem(_raw(client, f"{trial}/tell", '{"values": [@]}'.replace("@", literal), headers), "values[0]")["value"] == shown
    assert _problem(_raw(client, f"{trial}/tell", '{"values": {"throughput": @}}'.replace("@", literal), headers), "values.throughput")
    assert _problem(_raw(client, f"{trial}/tell", '{"values": [1.0], "metrics": {"mfu": @}}'.replace("@", literal), headers), "metrics.mfu")
    assert _problem(_raw(client, f"{trial}/tell", '{"values": [1.0], "telemetry": {"gpu": {"util": @}}}'.replace("@", literal), headers), "telemetry.gpu.util")
    assert _problem(_raw(client, "/api/v1/spaces/validate", '{"space": @}'.replace("@", space), headers), "space.params.micro_batch_size.high")

    # nothing was stored or half-done: the trial still takes a good tell, the study reads fine
    told = client.post(f"{trial}/tell", json={"values": [1.0]}, headers=headers)
    assert told.status_code == 200, told.text
    assert client.get(trial).status_code == 200
    assert client.get("/api/v1/studies").json()["total"] == total  # no study was added
    assert [client.get(f"/api/v1/studies/{n}").status_code for n in refused] == [404, 404, 404]


def test_connection_survives_a_nan_body_on_a_live_server(tmp_path):
    """Before: the 500 came with a reset connection, so the client's next request failed too."""
    import httpx

    url = sqlite_db(tmp_path)
    token = new_token(url)
    server = LiveServer(url, "--no-run").start()
    try:
        headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
        with httpx.Client(base_url=server.base, headers=headers) as client:
            body = json.dumps(_study("s1")).replace('"n_trials": 10', '"timeout_s": NaN')
            for _ in range(3):  # the same keep-alive connection each time
                r = client.post("/api/v1/studies", content=body)
                assert r.status_code == 422 and r.json()["problems"][0]["field"] == "timeout_s"
            assert client.get("/api/v1/health").status_code == 200
    finally:
        server.stop()


# -- seeds -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-5, -1, 2**32, 2**63, 2**80])
def test_seed_outside_optunas_range_is_422_and_nothing_is_created(env, seed):
    client, headers, name = env
    r = client.post("/api/v1/studies", json=_study(name, seed=seed), headers=headers)
    problem = _problem(r, "seed")
    assert problem["value"] == seed and "2**32" in problem["fix"]
    assert client.get(f"/api/v1/studies/{name}").status_code == 404


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_at_the_ends_of_the_range_is_accepted_and_asks_work(env, seed):
    client, headers, name = env
    assert client.post("/api/v1/studies", json=_study(name, seed=seed), headers=headers).status_code == 201
    _ask(client, headers, name)


@pytest.mark.parametrize("seed", [-5, 2**32, 2**80, True, "1"])
def test_study_spec_refuses_a_seed_optuna_would_refuse(seed):
    with pytest.raises(ValidationError) as caught:
        StudySpec(name="s", workload="external", space=None, seed=seed)  # type: ignore[arg-type]
    [problem] = [p for p in caught.value.problems if p.field == "seed"]
    assert problem.value == seed and "4294967295" in problem.fix


# -- integers beyond int64 ---------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/studies?offset=9223372036854775808",
        "/api/v1/studies?offset=-1",
        "/api/v1/studies?limit=9223372036854775808",
        "/api/v1/studies?offset=1208925819614629174706176",
        "/api/v1/dashboard/studies?offset=9223372036854775808",
        "/api/v1/studies/{name}/trials?offset=9223372036854775808",
        "/api/v1/dashboard/studies/{name}/trials?offset=9223372036854775808",
        "/api/v1/studies/{name}/trials/9223372036854775808",
        "/api/v1/studies/{name}/trials/-1",
        "/api/v1/dashboard/studies/{name}/trials/9223372036854775808",
    ],
)
def test_query_and_path_integers_beyond_int64_are_422(env, path):
    client, headers, name = env
    assert client.post("/api/v1/studies", json=_study(name), headers=headers).status_code == 201
    field = path.rsplit("?", 1)[1].split("=")[0] if "?" in path else "number"
    r = client.get(path.format(name=name))
    _problem(r, field)
    assert r.json()["problems"][0]["fix"].startswith("use a value")


def test_offset_at_int64_max_is_an_empty_page_not_an_error(env):
    client, headers, name = env
    assert client.post("/api/v1/studies", json=_study(name), headers=headers).status_code == 201
    page = client.get(f"/api/v1/studies?offset={INT64_MAX}")
    assert page.status_code == 200 and page.json()["items"] == []
    assert client.get(f"/api/v1/dashboard/studies?offset={INT64_MAX}").status_code == 200
    assert client.get(f"/api/v1/studies/{name}/trials/{INT64_MAX}").status_code == 404


@pytest.mark.parametrize("step", [2**63, 2**80, -1])
def test_report_step_beyond_int64_is_422(env, step):
    client, headers, name = env
    assert client.post("/api/v1/studies", json=_study(name), headers=headers).status_code == 201
    number = _ask(client, headers, name)
    r = client.post(f"/api/v1/studies/{name}/trials/{number}/report", json={"step": step, "value": 1.0}, headers=headers)
    assert _problem(r, "step")["value"] == step
    ok = client.post(f"/api/v1/studies/{name}/trials/{number}/report", json={"step": INT64_MAX, "value": 1.0}, headers=headers)
    assert ok.status_code == 200, ok.text


def test_integers_beyond_int64_inside_free_form_objects_are_422(env):
    client, headers, name = env
    r = client.post("/api/v1/studies", json=_study(name, workload_params={"n": 2**64}), headers=headers)
    assert _problem(r, "workload_params.n")["value"] == 2**64
    r = client.post("/api/v1/studies", json=_study(name, memory_limit_bytes=2**63), headers=headers)
    _problem(r, "memory_limit_bytes")


# -- device strings ------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda:0; touch x", "cuda:", "cuda:x", "cuda:0 ", "cuda:0\n", "CPU", "gpu", "cuda:-1", "", "cuda:12345"])
def test_device_must_be_exactly_auto_cpu_cuda_or_cuda_n(env, device):
    client, headers, name = env
    problem = _problem(client.post("/api/v1/studies", json=_study(name, device=device), headers=headers), "device")
    assert problem["value"] == device and "cuda:N" in problem["fix"]
    with pytest.raises(ValidationError) as caught:
        StudySpec(name="s", workload="external", space=None, device=device)  # type: ignore[arg-type]
    assert [p.field for p in caught.value.problems] == ["device"]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:15"])
def test_good_devices_are_accepted(env, device):
    client, headers, name = env
    r = client.post("/api/v1/studies", json=_study(name, device=device), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["device"] == device


# -- the renderer ---------------------------------------------------------------------------
def test_the_problem_renderer_cannot_fail_on_any_value():
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    values = [math.nan, math.inf, -math.inf, b"\xff", {1: {math.nan}}, Unprintable(), 2**200, [math.inf, (1, math.nan)]]
    for value in values:
        response = problem_response(ApiProblem(422, "Invalid input", "x", [FieldProblem("f", value, "bad", "fix it")]))
        body = json.loads(response.body)  # strict JSON: no NaN/Infinity tokens
        assert body["status"] == 422 and body["problems"][0]["field"] == "f"
    assert json_safe([math.nan, math.inf, -math.inf]) == ["NaN", "Infinity", "-Infinity"]


def test_openapi_documents_problem_answers_and_limits(env):
    client, _, _ = env
    schema = client.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    create = schema["paths"]["/api/v1/studies"]["post"]["responses"]
    for status in ("400", "401", "409", "413", "422"):
        assert create[status]["content"] == {"application/problem+json": {"schema": problem_ref}}, status
    tell = schema["paths"]["/api/v1/studies/{name}/trials/{number}/tell"]["post"]["responses"]
    assert {"401", "404", "409", "413", "422"} <= set(tell)
    assert "404" in schema["paths"]["/api/v1/studies/{name}"]["get"]["responses"]
    params = {p["name"]: p for p in schema["paths"]["/api/v1/studies"]["get"]["parameters"]}
    limit = next(o for o in params["limit"]["schema"]["anyOf"] if o.get("type") == "integer")
    assert limit["maximum"] == Settings().max_page_size
    assert params["offset"]["schema"]["maximum"] == INT64_MAX
    create_body = schema["components"]["schemas"]["StudyCreate"]["properties"]
    assert create_body["seed"]["maximum"] == 2**32 - 1 and create_body["seed"]["minimum"] == 0
    assert create_body["device"]["pattern"] == "^(auto|cpu|cuda|cuda:[0-9]{1,4})$"
    probed_at = schema["components"]["schemas"]["HardwareRead"]["properties"]["probed_at"]
    assert probed_at["format"] == "date-time"


def test_timestamps_carry_their_utc_offset(env):
    client, headers, name = env
    assert client.get("/api/v1/hardware").json()["probed_at"].endswith("Z")
    study = client.post("/api/v1/studies", json=_study(name), headers=headers).json()
    assert study["created_at"].endswith("Z") and study["updated_at"].endswith("Z")
    number = _ask(client, headers, name)
    assert client.get(f"/api/v1/studies/{name}/trials/{number}").json()["datetime_start"].endswith("Z")
