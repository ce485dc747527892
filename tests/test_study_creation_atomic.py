"""A study whose creation fails after validation leaves nothing behind: no Optuna study,
no service row, no "external" ghost in the list, and the name stays free (issue 12).

The failure is a registered workload's own: its default config raises while the server
enqueues the study's grid (after the request was validated and the study row written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import TINY_SPACE, new_token, sqlite_db
from tuner.client import TunerClient
from tuner.errors import FieldProblem, ValidationError
from tuner.storage.rdb import open_storage
from tuner.study.attrs import StudyAttr
from tuner.study.discard import no_ghost_on_failure
from tuner.types import TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Reporter, TrialRequest, Workload, WorkloadParam, register_workload

GRID = {"name": "grid", "params": {"micro_batch_size": {"type": "categorical", "choices": [1, 2]}}}


@register_workload
class NoDefaultConfig(Workload):
    """Validates its params, then cannot build its default config (the user's bug)."""

    name = "no-default-config"
    params = (WorkloadParam("vocab", "int", 7, "vocabulary size"),)

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        raise ValidationError(FieldProblem("workload_params.vocab", params.get("vocab"), "has no default config", "fix the workload's default_config"))

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        return TrialResult(status=TrialStatus.OK, items_per_s=1.0)


@pytest.fixture
def service(tmp_path):
    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False, writer_process=False, sampler_process=False))
    token = new_token(url)
    with TestClient(app) as http:
        yield http, {"Authorization": f"Bearer {token}"}, url, token


def test_a_rest_or_client_creation_that_fails_after_validation_leaves_no_ghost(service):
    http, headers, url, token = service
    body = {"name": "ghost", "workload": NoDefaultConfig.name, "space": GRID, "sampler": "grid", "n_trials": 2, "run": True}
    r = http.post("/api/v1/studies", json=body, headers=headers)
    assert r.status_code == 422, r.text  # the workload's own problem, not "name already taken"
    assert r.json()["problems"][0]["field"] == "workload_params.vocab"
    client = TunerClient("http://testserver", token, transport=http._transport)
    with pytest.raises(ValidationError) as caught:
        client.create_study("ghost-too", GRID, NoDefaultConfig.name, sampler="grid", n_trials=2)
    assert caught.value.problems[0].field == "workload_params.vocab"
    assert optuna.get_all_study_names(url) == []  # nothing half-written in Optuna's tables
    assert [s.name for s in client.studies()] == []  # and no "external" ghost in the list
    # the names are free again: the same requests, fixed, create the studies
    assert http.post("/api/v1/studies", json=body | {"run": False, "workload": None, "sampler": "random", "space": TINY_SPACE}, headers=headers).status_code == 201
    assert client.create_study("ghost-too", TINY_SPACE, run=False).name == "ghost-too"


def test_cli_a_failed_run_removes_the_empty_study_it_created_and_never_an_existing_one(tmp_path):
    from tuner.cli.main import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    # `tuner tune` of a workload that fails while the study is planned: exit 2, no study
    code = main(["tune", str(_space_file(tmp_path)), "--workload", NoDefaultConfig.name, "--study", "cli-ghost", "--storage", url, "--no-generator", "--trials", "2", "--output", str(tmp_path / "best.yaml")])
    assert code == 2 and optuna.get_all_study_names(url) == []
    # a failure after the study was created (here: right after) removes only what this run created
    with pytest.raises(RuntimeError), no_ghost_on_failure(url, "made-here"):
        optuna.create_study(study_name="made-here", storage=open_storage(url)).set_user_attr(StudyAttr.SPEC, {"name": "made-here"})
        raise RuntimeError("the baseline could not start")
    assert "made-here" not in optuna.get_all_study_names(url)
    optuna.create_study(study_name="kept", storage=open_storage(url))
    with pytest.raises(RuntimeError), no_ghost_on_failure(url, "kept"):
        raise RuntimeError("a resumed study's run failed")
    assert "kept" in optuna.get_all_study_names(url)  # it existed before: never deleted


def _space_file(tmp_path):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path
