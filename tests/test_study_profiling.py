"""Profiling a study's trial: a real tiny gpt study, a real torch.profiler run, the report
stored with the study, and read back through the CLI, the REST API and the dashboard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import sqlite_db
from tests.shared_data import H200_DIR
from tuner.cli.cmd_tune import profile_best, profile_summary_text
from tuner.cli.main import main
from tuner.errors import ValidationError
from tuner.executors.inline import InlineExecutor
from tuner.space.search_space import load_space
from tuner.study import create_study, quiet_optuna_logging, run_study
from tuner.study.profiling import profile_attr_key, profile_trial, stored_profile
from tuner.study.results import best_record, records_of
from tuner.study.spec import StudySpec
from tuner.types import TrialBudget

STUDY = "tiny-gpt-profiled"
TINY_GPT = {"layers": 1, "d_model": 32, "heads": 2, "vocab_size": 256}
SPACE = {
    "name": "tiny-gpt",
    "params": {
        "micro_batch_size": {"type": "categorical", "choices": [2, 4]},
        # fixed, not a one-choice search: the baseline then runs 32 too (a throughput
        # study holds a searched sequence length at the default, tuner.study.quality)
        "max_sequence_length": 32,
    },
}


def gpt_spec(name: str, n_trials: int = 3) -> StudySpec:
    return StudySpec(
        name=name,
        workload="gpt",
        space=load_space(SPACE),
        workload_params=TINY_GPT,
        n_trials=n_trials,
        budget=TrialBudget(max_steps=4, warmup_steps=1, eval_batches=1),
        sampler="random",
        baseline=False,
        use_generator=False,
        device="cpu",
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 3-trial gpt study in a migrated SQLite DB, its best trial profiled once."""
    quiet_optuna_logging()
    url = sqlite_db(tmp_path_factory.mktemp("study-profiling"))
    executor = InlineExecutor(workers=1)  # in-process: no worker start-up in a 40 s budget
    try:
        outcome = run_study(gpt_spec(STUDY), storage=url, executor=executor)
    finally:
        executor.close()
    number, report = profile_trial(url, STUDY, steps=2, device="cpu")
    others = sorted(
        t.number for t in optuna.load_study(study_name=STUDY, storage=url).trials if t.number != number
    )
    # `cli_trial` gets profiled by the CLI test; `unprofiled` by nobody (the API test's control).
    return {
        "url": url, "outcome": outcome, "number": number, "report": report,
        "cli_trial": others[0], "unprofiled": others[-1],
    }  # fmt: skip


def test_best_trial_profile_is_stored_with_the_study(env: dict[str, Any]) -> None:
    study = optuna.load_study(study_name=STUDY, storage=env["url"])
    records = records_of(study)
    best = best_record(records, ("throughput",))
    assert best is not None and len(records) == 3
    assert env["number"] == best.number == env["outcome"].best_trial
    report = env["report"]
    assert report["status"] == "ok" and report["trial_number"] == best.number
    assert report["config"] == best.config.to_dict()  # the trial's own config was profiled
    assert report["params"]["d_model"] == 32 and report["params"]["layers"] == 1
    # Stored under tuner.hardware.profile.<n>, read back from the database as it was returned.
    assert stored_profile(study, best.number) == json.loads(json.dumps(report))
    assert stored_profile(study, env["unprofiled"]) is None
    cpu = report["cpu"]
    assert cpu["hotspots"] and sum(h["share"] for h in cpu["hotspots"]) == pytest.approx(1.0, abs=1e-6)
    assert cpu["categories"]["matmul"] > 0
    assert sum(cpu["categories"].values()) == pytest.approx(1.0, abs=1e-6)


def test_cli_profiles_a_chosen_trial_as_json_and_says_where_it_stored_it(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    other = env["cli_trial"]  # not the best trial
    rc = main(
        ["profile", "--study", STUDY, "--storage", env["url"], "--trial", str(other),
         "--steps", "1", "--device", "cpu", "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = json.loads(captured.out)
    assert printed["trial_number"] == other and printed["steps"] == 1
    assert printed["cpu"]["categories"]["matmul"] > 0
    assert profile_attr_key(other) in captured.err and STUDY in captured.err
    study = optuna.load_study(study_name=STUDY, storage=env["url"])
    assert stored_profile(study, other) == printed
    assert stored_profile(study, env["number"])["steps"] == 2  # the best trial's profile is kept


@pytest.mark.parametrize(
    "argv, field",
    [
        (["profile", "--steps", "1"], "--workload/--study"),
        (["profile", "--workload", "gpt", "--study", STUDY], "--workload/--study"),
        (["profile", "--study", STUDY, "--config", '{"micro_batch_size": 2}'], "--config"),
        (["profile", "--workload", "gpt", "--trial", "0"], "--trial"),
    ],
)
def test_cli_wants_exactly_one_of_workload_or_study(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert field in err and "fix:" in err


def test_unknown_trial_and_empty_study_name_the_field_and_the_fix(env: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        profile_trial(env["url"], STUDY, 99, device="cpu")
    (problem,) = info.value.problems
    assert problem.field == "trial" and problem.value == 99 and "0 to 2" in problem.fix

    create_study(gpt_spec("no-trials-yet"), env["url"])
    with pytest.raises(ValidationError) as info:
        profile_trial(env["url"], "no-trials-yet", device="cpu")
    (problem,) = info.value.problems
    assert problem.field == "study" and "has no trials" in problem.problem and "tuner tune" in problem.fix


def test_replay_study_is_refused_with_the_workload_named(env: dict[str, Any], tmp_path: Path) -> None:
    replay = StudySpec(
        name="replayed",
        workload="replay",
        space=load_space(
            {"name": "r", "params": {"micro_batch_size": {"type": "categorical", "choices": [8, 16]}}}
        ),
        workload_params={"table": str(H200_DIR / "gpt_124m.jsonl")},
        n_trials=1,
        use_generator=False,
    )
    create_study(replay, env["url"])
    with pytest.raises(ValidationError) as info:
        profile_trial(env["url"], "replayed")
    (problem,) = info.value.problems
    assert problem.field == "workload" and problem.value == "replay" and "gpt" in problem.fix

    # `tune --profile-best` refuses a replay workload before tuning, not after.
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps({"name": "r", "params": {"micro_batch_size": {"type": "int", "low": 8, "high": 16}}})
    )
    rc = main(["tune", str(space), "--workload", "replay", "--profile-best", "--storage", env["url"]])
    assert rc == 2
    assert not [s for s in optuna.get_all_study_names(env["url"]) if s.startswith("r-")]


def test_tune_profile_best_summarises_categories(env: dict[str, Any]) -> None:
    outcome = env["outcome"]
    summary = profile_best(argparse.Namespace(storage=env["url"]), gpt_spec(STUDY), outcome)
    assert summary is not None and summary["trial"] == outcome.best_trial and summary["status"] == "ok"
    assert summary["stored_as"] == profile_attr_key(outcome.best_trial)
    assert summary["categories"]["matmul"] > 0 and summary["top_hotspots"]
    text = profile_summary_text(summary)
    assert f"#{outcome.best_trial}" in text and "matmul" in text
    assert summary["top_hotspots"][0]["name"][:40] in text


def test_rest_api_and_dashboard_show_the_stored_hotspots(env: dict[str, Any]) -> None:
    best = env["number"]
    app = create_app(Settings(storage=env["url"], run_studies=False))
    with TestClient(app) as client:
        for path in (f"/api/v1/studies/{STUDY}/trials", f"/api/v1/dashboard/studies/{STUDY}/trials"):
            r = client.get(f"{path}/{best}")
            assert r.status_code == 200, r.text
            profile = r.json()["telemetry"]["profile"]
            assert profile["trial_number"] == best
            assert profile["cpu"]["hotspots"][0]["share"] > 0
            assert profile["cpu"]["categories"]["matmul"] > 0
        # A trial nobody profiled gets no profile section.
        for path in (f"/api/v1/studies/{STUDY}/trials", f"/api/v1/dashboard/studies/{STUDY}/trials"):
            r = client.get(f"{path}/{env['unprofiled']}")
            assert r.status_code == 200 and "profile" not in r.json()["telemetry"]
