"""`tuner scaling`'s report on the dashboard: `measure_scaling` stores it with the study
(attr `tuner.scaling`) and the study page's JSON serves it as a table (world size,
items/s, speedup, efficiency, nodes), fresh after a rerun, absent when malformed.

The trials run in this process (InlineExecutor) on a probe workload whose throughput
follows a fixed scaling curve, so the test checks the arithmetic and the plumbing, not a
machine; real multi-rank measurements are benchmarks/scaling.py's job.
"""

from __future__ import annotations

import json

import optuna
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import new_token, sqlite_db
from tuner.executors.inline import InlineExecutor
from tuner.space.search_space import load_space
from tuner.study import run_study
from tuner.study.attrs import StudyAttr
from tuner.study.scaling import measure_scaling
from tuner.study.spec import StudySpec
from tuner.types import TrialResult, TrialStatus
from tuner.workloads import Reporter, TrialRequest, Workload, WorkloadParam, register_workload

#: throughput of N ranks relative to N x one rank: the guide's 4 GPUs at 70 %
EFFICIENCY = {1: 1.0, 2: 0.9, 4: 0.7}


@register_workload
class ScalingProbe(Workload):
    """items/s = per_rank x N x EFFICIENCY[N]; a world size it has no figure for fails."""

    name = "dashtest_scaling_probe"
    item_unit = "samples"
    params = (WorkloadParam("per_rank", "float", 1000.0, "items/s of one rank"),)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        size = request.config.world_size
        if size not in EFFICIENCY:
            return TrialResult.failed(f"config.world_size: world_size={size} needs {size} ranks; the nodes hold 4")
        nodes = [{"rank": r, "node_ip": f"10.0.0.{1 + r // 2}"} for r in range(size)]
        rate = request.params["per_rank"] * request.config.micro_batch_size * size * EFFICIENCY[size]
        return TrialResult(status=TrialStatus.OK, items_per_s=rate, steps_run=1, telemetry={"nodes": nodes})


@pytest.fixture()
def study(tmp_path):
    url = sqlite_db(tmp_path)
    spec = StudySpec(
        name="scaled", workload="dashtest_scaling_probe", sampler="random", pruner="none", n_trials=2,
        baseline=False, use_generator=False, device="cpu",
        space=load_space({"name": "s", "params": {"micro_batch_size": {"type": "categorical", "choices": [2, 4]}}}),
    )
    with InlineExecutor() as executor:
        run_study(spec, storage=url, executor=executor, confirm=0)
    app = create_app(Settings(storage=url, run_studies=False))
    with TestClient(app, headers={"Authorization": f"Bearer {new_token(url)}"}) as client:
        yield client, url


def _rows(client) -> dict[int, dict]:
    answer = client.get("/api/v1/dashboard/studies/scaled")
    assert answer.status_code == 200, answer.text
    scaling = answer.json()["scaling"]
    return {r["world_size"]: r for r in scaling["rows"]} if scaling else {}


def test_the_study_page_serves_the_scaling_table_and_follows_a_rerun(study) -> None:
    client, url = study
    assert _rows(client) == {}  # not measured yet: no table
    with InlineExecutor() as executor:
        report = measure_scaling(url, "scaled", executor, world_sizes=[1, 2, 4, 8])
    summary = client.get("/api/v1/dashboard/studies/scaled").json()["scaling"]
    assert summary["trial_number"] == report.trial_number and summary["item_unit"] == "samples"
    rows = {r["world_size"]: r for r in summary["rows"]}
    assert list(rows) == [1, 2, 4, 8]
    base = rows[1]["items_per_s"]
    assert base == 1000.0 * report.config["micro_batch_size"]
    assert rows[2]["speedup"] == pytest.approx(1.8) and rows[2]["efficiency"] == pytest.approx(0.9)
    assert rows[4]["speedup"] == pytest.approx(2.8) and rows[4]["efficiency"] == pytest.approx(0.7)
    assert rows[4]["items_per_s"] == pytest.approx(2.8 * base) and rows[4]["nodes"] == ["10.0.0.1", "10.0.0.2"]
    assert rows[8]["status"] == "failed" and rows[8]["speedup"] is None and "world_size=8" in rows[8]["reason"]

    # a rerun replaces the report; the page shows the new one without any new trial
    EFFICIENCY[2] = 0.5
    try:
        with InlineExecutor() as executor:
            measure_scaling(url, "scaled", executor, world_sizes=[1, 2])
    finally:
        EFFICIENCY[2] = 0.9
    rerun = _rows(client)
    assert list(rerun) == [1, 2] and rerun[2]["efficiency"] == pytest.approx(0.5)


def test_a_malformed_scaling_attr_shows_no_table_and_the_page_still_answers(study) -> None:
    client, url = study
    stored = optuna.load_study(study_name="scaled", storage=url)
    stored.set_user_attr(StudyAttr.SCALING, {"points": [{"world_size": "two", "speedup": "fast"}, 7]})
    assert _rows(client) == {}
    stored.set_user_attr(StudyAttr.SCALING, {"points": [{"world_size": 2, "speedup": float("inf"), "nodes": "a"}]})
    row = _rows(client)[2]
    assert row["speedup"] is None and row["nodes"] == [] and row["items_per_s"] is None
    json.dumps(row, allow_nan=False)  # the answer stays strict JSON
