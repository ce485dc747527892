"""Inference studies end to end on this CPU: the SLO and the accuracy guard decide what may
be best; bad serving knobs are field errors in a space, the CLI and REST (422)."""

from __future__ import annotations

import json
import warnings

import optuna
import pytest
import yaml
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import new_token, sqlite_db
from tests.inference_test_workloads import TinyServed
from tuner.cli.main import main as cli_main
from tuner.inference.objectives import best_index, eligible
from tuner.inference.request import RampBudget
from tuner.inference.result import InferenceStatus
from tuner.space.search_space import SearchSpace
from tuner.study.inference_study import run_inference_study
from tuner.study.spec import StudySpec
from tuner.workloads import register_workload

warnings.filterwarnings("ignore", category=DeprecationWarning)
register_workload(TinyServed)

QUICK_RAMP = RampBudget(step_s=0.1, max_steps=2, min_requests=20, max_requests=800)
BAD_KNOBS = {
    "batch_window_ms": {"type": "categorical", "choices": [-1, 2]},
    "max_batch_size": 0,
    "serving_precision": {"type": "categorical", "choices": ["fp32", "int4"]},
}


def test_configs_over_the_slo_or_inaccurate_are_never_best(tmp_path, capsys):
    # Input channel 0 is an outlier (1000): int8 dynamic rounds every other feature to 0.
    space = SearchSpace.from_dict(
        {
            "name": "tiny-serving",
            "kind": "inference",
            "params": {
                "max_batch_size": 4096,
                "int8_backend": "fbgemm",  # torchao would do the same; fbgemm skips its import here
                "serving_precision": {"type": "categorical", "choices": ["fp32", "int8_dynamic"]},
                # 400 ms: a batch that never fills holds every request past the 150 ms SLO
                "batch_window_ms": {"type": "categorical", "choices": [0, 400]},
            },
        }
    )
    spec = StudySpec(
        name="slo-and-accuracy",
        workload="tiny-served",
        workload_params={"outlier": 1000.0},
        space=space,
        objectives=("qps_at_slo",),
        sampler="grid",
        n_trials=4,
        slo_p99_ms=150,  # generous: this machine is shared; the window alone is 400 ms
    )
    outcome = run_inference_study(  # confirm_rounds=0: one measurement each (test_inference_starting)
        spec, storage=f"sqlite:///{tmp_path / 'inf.db'}", progress=False, ramp=QUICK_RAMP, confirm_rounds=0
    )
    by_knobs = {(c.serving_precision, c.batch_window_ms): r for _, c, r in outcome.trials}
    assert set(by_knobs) == {("fp32", 0.0), ("fp32", 400.0), ("int8_dynamic", 0.0), ("int8_dynamic", 400.0)}
    over = by_knobs[("fp32", 400.0)]
    assert over.status is InferenceStatus.OVER_SLO
    assert over.p50_ms is not None and over.p50_ms >= 300  # the window's queueing is in the latency
    for window in (0.0, 400.0):
        inaccurate = by_knobs[("int8_dynamic", window)]
        assert inaccurate.status is InferenceStatus.INACCURATE
        assert inaccurate.accuracy["top1_agreement"] < 0.95
    good = by_knobs[("fp32", 0.0)]
    assert good.ok and good.qps > 0 and good.p99_ms <= 150
    assert outcome.best_config is not None and (
        outcome.best_config.serving_precision,
        outcome.best_config.batch_window_ms,
    ) == ("fp32", 0.0)
    assert outcome.best_result is good
    assert [eligible(r, 150) for r in (over, good)] == [False, True]
    assert best_index([over, by_knobs[("int8_dynamic", 0.0)], good], "qps_at_slo", 150) == 2
    # Optuna agrees: the others were told as pruned, so its best is the same trial.
    study = optuna.load_study(study_name=spec.name, storage=outcome.storage)
    assert study.best_trial.number == outcome.best_trial
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == 3
    assert outcome.baseline_result.ok and outcome.ratio is not None and outcome.ratio > 0
    data = outcome.to_dict()
    assert data["best_result"]["p99_ms"] == good.p99_ms and data["ratio"] == outcome.ratio
    out = tmp_path / "served.yaml"
    assert (
        cli_main(
            ["export", spec.name, "--storage", outcome.storage, "--format", "yaml", "--output", str(out)]
        )
        == 0
    )
    exported = yaml.safe_load(out.read_text())
    assert exported["kind"] == "inference" and exported == {
        "kind": "inference",
        **outcome.best_config.to_dict(),
    }
    capsys.readouterr()
    assert cli_main(["best", spec.name, "--storage", outcome.storage, "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["config"] == outcome.best_config.to_dict() and best["result"]["status"] == "ok"


def test_bad_serving_knobs_are_field_errors_in_the_cli(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"name": "bad", "kind": "inference", "workload": "recsys", "params": BAD_KNOBS})
    )
    assert cli_main(["tune", str(path), "--trials", "1", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    for field in ("params.batch_window_ms", "params.max_batch_size", "params.serving_precision"):
        assert field in err
    assert "int4" in err and "int8_dynamic" in err  # the value and the fix


@pytest.fixture
def api(tmp_path):
    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False))
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {new_token(url)}"}


def test_rest_accepts_inference_spaces_and_answers_bad_knobs_with_422(api):
    client, headers = api
    space = {"name": "rec", "kind": "inference", "params": BAD_KNOBS}
    r = client.post(
        "/api/v1/studies", json={"name": "bad-inf", "workload": "recsys", "space": space}, headers=headers
    )
    assert r.status_code == 422
    problems = {p["field"]: p for p in r.json()["problems"]}
    assert set(problems) == {
        "params.batch_window_ms.choices[0]",
        "params.max_batch_size.value",
        "params.serving_precision.choices[1]",
    }
    assert problems["params.serving_precision.choices[1]"]["value"] == "int4"
    assert "int8_dynamic" in problems["params.serving_precision.choices[1]"]["fix"]
    good = {
        "name": "rec",
        "kind": "inference",
        "params": {"max_batch_size": {"type": "int", "low": 1, "high": 64}},
    }
    r = client.post(
        "/api/v1/studies",
        json={"name": "inf", "workload": "recsys", "space": good, "slo_p99_ms": 20},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["objectives"] == ["qps_at_slo"]
    r = client.post(
        "/api/v1/studies",
        json={"name": "inf2", "workload": "recsys", "space": good, "objectives": ["throughput"]},
        headers=headers,
    )
    assert r.status_code == 422 and "objectives" in {p["field"] for p in r.json()["problems"]}


SERVING_SPACE = {
    "name": "rec-serving",
    "kind": "inference",
    "params": {
        "max_batch_size": {"type": "categorical", "choices": [1, 16, 64]},
        "serving_precision": {"type": "categorical", "choices": ["fp32", "bf16", "int8_dynamic"]},
    },
}


def test_ask_tell_of_serving_trials_end_to_end(api):
    """The client serves each asked config itself and tells QPS at the SLO and p99 at the
    target rate; best and the Pareto front are serving configs."""
    client, headers = api
    body = {
        "name": "serve-at",
        "workload": "recsys",
        "space": SERVING_SPACE,
        "run": False,
        "n_trials": 5,
        "sampler": "random",
        "objectives": ["qps_at_slo", "p99_at_qps"],
        "slo_p99_ms": 20,
        "target_qps": 500,
    }
    r = client.post("/api/v1/studies", json=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["mode"] == "ask_tell" and r.json()["directions"] == ["maximize", "minimize"]
    asked = [client.post("/api/v1/studies/serve-at/ask", headers=headers).json() for _ in range(4)]
    for answer in asked:
        config = answer["config"]  # the whole serving config: the space's knobs, the rest at the default
        assert config["max_batch_size"] in (1, 16, 64) and config["serving_precision"] in ("fp32", "bf16", "int8_dynamic")
        assert config["batch_window_ms"] == 0.0 and config["compile_mode"] == "off"
        assert set(answer["params"]) == {"max_batch_size", "serving_precision"}
    n = [a["trial_number"] for a in asked]

    def tell(number, **payload):
        return client.post(f"/api/v1/studies/serve-at/trials/{number}/tell", json=payload, headers=headers)

    # by name or in objective order; p99 at the SLO in metrics
    assert tell(n[0], values={"qps_at_slo": 100.0, "p99_at_qps": 8.0}, metrics={"p99_ms": 15.0}).json()["state"] == "COMPLETE"
    r = tell(n[1], values=[250.0, 12.0])  # no p99: the SLO could not be checked
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "metrics.p99_ms"
    assert tell(n[1], values=[250.0, 12.0], metrics={"p99_ms": 19.0}).json()["state"] == "COMPLETE"
    # an ok trial over the SLO would be best while breaking it: a field error, nothing told
    r = tell(n[2], values=[900.0, 1.0], metrics={"p99_ms": 35.0})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "metrics.p99_ms"
    assert "pruned" in r.json()["problems"][0]["fix"]
    assert tell(n[2], status="pruned", reason="over the SLO at every rate").json()["state"] == "PRUNED"
    r = tell(n[3], values={"qps": 5.0})
    assert r.status_code == 422 and {"values.qps", "values.qps_at_slo"} <= {p["field"] for p in r.json()["problems"]}
    best = client.get("/api/v1/studies/serve-at/best", headers=headers).json()
    assert [t["number"] for t in best["trials"]] == [n[1]]  # the front's best QPS, not the pruned 900
    assert best["trials"][0]["config"] == asked[1]["config"]
    assert yaml.safe_load(best["content"]) == {"kind": "inference", **asked[1]["config"]}
    front = client.get("/api/v1/studies/serve-at/pareto", headers=headers).json()
    assert sorted(t["number"] for t in front["trials"]) == sorted(n[:2])  # neither dominates the other
    study = client.get("/api/v1/studies/serve-at", headers=headers).json()
    assert study["best"]["number"] == n[1] and study["best"]["config"] == asked[1]["config"]
    # the dashboard's serving views read told trials as measured ones (no default measured: no ratio)
    view = client.get("/api/v1/dashboard/studies/serve-at/inference", headers=headers).json()
    assert sorted(view["scatter"]["ok"]["number"]) == sorted(n[:2]) and view["slo_p99_ms"] == 20
    assert view["best"]["number"] == n[1] and view["best"]["qps"] == 250.0 and view["best"]["ratio"] is None
    item = next(i for i in client.get("/api/v1/dashboard/studies", headers=headers).json()["items"] if i["name"] == "serve-at")
    assert item["best"] == {"number": n[1], "value": 250.0} and item["gain"] is None
    assert "default config was not measured" in item["gain_report"]["description"]
    # the Python client: serving configs, typed
    from tuner.client import TunerClient
    from tuner.inference.config import InferenceConfig

    token = headers["Authorization"].removeprefix("Bearer ")
    with TunerClient("http://testserver", token=token, transport=client._transport) as tc:
        served = tc.study("serve-at")
        assert served.best_config() == InferenceConfig.from_dict(asked[1]["config"])
        with served.ask() as trial:
            assert isinstance(trial.config, InferenceConfig)
            trial.tell({"qps_at_slo": 50.0, "p99_at_qps": 30.0}, metrics={"p99_ms": 9.0})
        assert {p.number for p in served.pareto()} == set(n[:2])  # (50, 30) is dominated


def test_export_snippet_builds_the_served_model():
    """`tuner export --format torch` of an inference config: a snippet that, run, builds the
    tuned serving model (here fused + int8) and states the batcher settings."""
    import torch
    from torch import nn

    from tuner.inference.config import InferenceConfig
    from tuner.inference.export import serving_snippet

    snippet = serving_snippet(
        InferenceConfig(
            max_batch_size=32,
            batch_window_ms=2,
            fusion=True,
            serving_precision="int8_dynamic",
            int8_backend="fbgemm",
        )
    )
    namespace: dict = {"__name__": "snippet"}
    exec(compile(snippet, "snippet.py", "exec"), namespace)
    assert namespace["MAX_BATCH_SIZE"] == 32 and namespace["BATCH_WINDOW_MS"] == 2
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).eval()
    served = namespace["build_served_model"](model)
    kinds = {type(m).__name__ for m in served.modules()}
    assert "ConvReLU2d" in kinds and "BatchNorm2d" not in kinds
    assert any("quantized" in type(m).__module__ for m in served.modules())
    with torch.inference_mode():
        assert served(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    # a workload's fused serving form is used too: the recsys DLRM's tables in one lookup
    from tuner.workloads.recsys_model import DLRM
    from tuner.workloads.recsys_serving_model import ClickScorer

    dlrm = DLRM(tables=3, rows=50, dim=8, dense_features=4).eval()
    served = namespace["build_served_model"](ClickScorer(dlrm))
    assert not any(isinstance(m, nn.EmbeddingBag) for m in served.modules())
    dense, ids = torch.randn(5, 4), torch.randint(0, 50, (5, 3))
    with torch.inference_mode():
        # int8 Linear layers (this config): probabilities within int8 rounding
        assert (served(dense, ids) - torch.sigmoid(dlrm(dense, ids))).abs().max() <= 5e-3
