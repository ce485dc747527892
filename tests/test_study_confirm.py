"""The confirmation phase: (baseline, best) re-measured back to back after the search.

- `replay` on the measured H200 table is deterministic, so every confirmed pair ratio
  must equal the table's best/default ratio exactly, and the requests must alternate.
- a tiny real GPT study (torch on CPU) is noisy: the outcome's ratio must be the median
  of its stored pairs, within their min-max.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.shared_data import H200_DIR
from tests.test_study import replay_spec as study_replay_spec
from tuner.cli.cmd_tune import ratio_sentence
from tuner.errors import ValidationError
from tuner.executors.inline import InlineExecutor
from tuner.space.search_space import load_space
from tuner.study import run_study
from tuner.study.attrs import StudyAttr
from tuner.study.events import ProgressUpdate
from tuner.study.spec import StudySpec
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult

H200_TABLE = H200_DIR / "gpt_124m.jsonl"
REPLAY_SPACE = {
    "name": "replay-confirm",
    "workload": "replay",
    "params": {
        "micro_batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        "precision": {"type": "categorical", "choices": ["bf16"]},
    },
}


class RecordingExecutor(InlineExecutor):
    """The real inline executor, remembering every config it was asked to measure."""

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[TrialConfig] = []

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        self.configs.append(request.config)
        return super().submit(request, on_report)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def replay_spec(name: str, **changes: Any) -> StudySpec:
    """test_study's replay study on this module's smaller space, 3 trials."""
    return study_replay_spec(name, **{"space": load_space(REPLAY_SPACE), "n_trials": 3, **changes})


def table_throughput(micro_batch_size: int, precision: str) -> float:
    rows = [json.loads(line) for line in H200_TABLE.read_text().splitlines()[1:]]
    return next(
        r["items_per_s"]
        for r in rows
        if r["micro_batch_size"] == micro_batch_size
        and r["precision"] == precision
        and not r.get("activation_checkpointing")
    )


def test_replay_confirmation_alternates_and_reproduces_the_table_ratio(storage):
    events: list[ProgressUpdate] = []
    with RecordingExecutor() as executor:
        outcome = run_study(
            replay_spec("confirm-replay"),
            storage=storage,
            executor=executor,
            progress=events.append,
            confirm=3,
        )

    best, base = outcome.best_config, outcome.baseline_config
    assert best is not None and base is not None and best != base
    expected = table_throughput(best.micro_batch_size, best.precision) / table_throughput(
        base.micro_batch_size, base.precision
    )
    # baseline + 3 trials, then exactly (baseline, best) x 3 in that order
    assert executor.configs[0] == base and len(executor.configs) == 1 + 3 + 2 * 3
    assert executor.configs[4:] == [base, best] * 3

    stored = optuna.load_study(study_name="confirm-replay", storage=storage).user_attrs[StudyAttr.CONFIRMATION]
    assert stored["best_trial_number"] == outcome.best_trial
    assert len(stored["pairs"]) == 3
    for pair in stored["pairs"]:
        assert pair["ratio"] == pytest.approx(expected, rel=1e-12)
        assert pair["ratio"] == pytest.approx(
            pair["best_items_per_s"] / pair["baseline_items_per_s"], rel=1e-12
        )
    assert outcome.ratio == pytest.approx(expected, rel=1e-12)
    assert outcome.search_ratio == pytest.approx(expected, rel=1e-12)
    assert outcome.ratio_range == pytest.approx((expected, expected), rel=1e-12)

    confirm_lines = [e.trial_reason for e in events if e.event == "confirm"]
    assert [line.split(":")[0] for line in confirm_lines] == ["pair 1/3", "pair 2/3", "pair 3/3"]
    # tuner.study.gain's one wording; deterministic pairs: a zero-width range above 1.0.
    assert ratio_sentence(outcome) == (
        f"gain over the default config: x{expected:.2f}, median of 3 back-to-back pairs, "
        f"range {expected:.2f}-{expected:.2f}"
    )
    assert outcome.confirmation.significant and outcome.gain.significant
    # the same machine load, the same table row: no run-to-run variation at all
    assert outcome.gain.best_cv == 0.0 and outcome.gain.baseline_cv == 0.0


def test_confirm_zero_keeps_the_single_measurement_ratio(storage):
    with RecordingExecutor() as executor:
        outcome = run_study(replay_spec("confirm-off"), storage=storage, executor=executor, confirm=0)

    assert len(executor.configs) == 1 + 3
    assert StudyAttr.CONFIRMATION not in optuna.load_study(study_name="confirm-off", storage=storage).user_attrs
    assert outcome.confirmation is None and outcome.ratio_range is None
    assert outcome.ratio is not None and outcome.ratio == outcome.search_ratio
    assert "back-to-back" not in ratio_sentence(outcome)


def test_no_confirmation_without_a_baseline_or_for_multi_objective(storage):
    with RecordingExecutor() as executor:
        no_base = run_study(replay_spec("confirm-nobase", baseline=False), storage=storage, executor=executor)
        assert len(executor.configs) == 3 and no_base.confirmation is None and no_base.ratio is None
    with RecordingExecutor() as executor:
        multi = run_study(
            replay_spec("confirm-multi", objectives=("throughput", "val_loss"), sampler="random"),
            storage=storage,
            executor=executor,
        )
        assert len(executor.configs) == 1 + 3 and multi.confirmation is None


def test_bad_confirm_is_rejected_naming_the_field(storage):
    with pytest.raises(ValidationError, match="confirm"):
        run_study(replay_spec("confirm-bad"), storage=storage, executor=InlineExecutor(), confirm=-1)


def tiny_gpt_spec(name: str, objective: str) -> StudySpec:
    space = load_space(
        {
            "name": name,
            "workload": "gpt",
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": [2, 4]},
                # fixed, not a one-choice search: the baseline then runs 32 too (a throughput
                # study holds a searched sequence length at the default, tuner.study.quality)
                "max_sequence_length": 32,
            },
        }
    )
    return StudySpec(
        name=name,
        workload="gpt",
        space=space,
        workload_params={"layers": 1, "d_model": 32, "heads": 2, "vocab_size": 256},
        objectives=(objective,),
        n_trials=2,
        sampler="grid",
        budget=TrialBudget(max_steps=4, warmup_steps=1, eval_batches=1),
        use_generator=False,
        device="cpu",
    )


def test_a_real_noisy_study_reports_the_median_of_its_pairs(storage):
    with InlineExecutor() as executor:
        outcome = run_study(tiny_gpt_spec("confirm-gpt", "throughput"), storage=storage, executor=executor)

    stored = optuna.load_study(study_name="confirm-gpt", storage=storage).user_attrs[StudyAttr.CONFIRMATION]
    ratios = [p["best_items_per_s"] / p["baseline_items_per_s"] for p in stored["pairs"]]
    assert len(ratios) == 3 and all(r > 0 for r in ratios)  # DEFAULT_CONFIRM_PAIRS
    assert outcome.ratio == pytest.approx(statistics.median(ratios))
    assert outcome.ratio_range == pytest.approx((min(ratios), max(ratios)))
    assert stored["ratio_median"] == pytest.approx(outcome.ratio)
    # Each side's run-to-run noise, from the real (noisy) measurements, stored with them.
    for side, key in (("best_items_per_s", "best_cv"), ("baseline_items_per_s", "baseline_cv")):
        runs = [p[side] for p in stored["pairs"]]
        assert stored[key] == pytest.approx(statistics.stdev(runs) / statistics.mean(runs))
        assert stored[key] > 0  # three CPU timings never agree to the last bit
    assert stored["significant"] == (min(ratios) > 1.0 or max(ratios) < 1.0)
    # The search's own ratio is kept, from the single measurements.
    assert outcome.search_ratio == pytest.approx(
        outcome.best_result.items_per_s / outcome.baseline_result.items_per_s
    )


def test_val_loss_studies_skip_confirmation(storage):
    with RecordingExecutor() as executor:
        outcome = run_study(tiny_gpt_spec("confirm-loss", "val_loss"), storage=storage, executor=executor)

    assert len(executor.configs) == 1 + 2  # baseline + trials, nothing after
    assert StudyAttr.CONFIRMATION not in optuna.load_study(study_name="confirm-loss", storage=storage).user_attrs
    assert outcome.confirmation is None and outcome.ratio == outcome.search_ratio


def test_best_and_the_dashboard_report_the_confirmed_ratio(storage):
    from fastapi.testclient import TestClient

    from api.db.migrate import upgrade
    from api.main import create_app
    from api.settings import Settings
    from tuner.cli.cmd_best import best_document

    upgrade(storage)  # the service's own tables, beside Optuna's

    with InlineExecutor() as executor:
        outcome = run_study(replay_spec("confirm-best"), storage=storage, executor=executor, confirm=2)
    study = optuna.load_study(study_name="confirm-best", storage=storage)
    search = outcome.search_ratio
    assert search is not None and best_document(storage, "confirm-best")["ratio_source"] == "confirmation"

    # A confirmation that disagrees with the search-time pair (as on a noisy machine):
    # what `best` and the dashboard report must follow the confirmation, not the search.
    base = 1000.0
    noisy = {
        "best_trial_number": outcome.best_trial,
        "pairs": [
            {"baseline_items_per_s": base, "best_items_per_s": base * r, "ratio": r} for r in (1.5, 1.6, 1.9)
        ],
        "n_failed": 0,
    }
    study.set_user_attr(StudyAttr.CONFIRMATION, noisy)
    document = best_document(storage, "confirm-best")
    assert document["ratio_to_default"] == pytest.approx(1.6) and document["ratio_source"] == "confirmation"
    assert document["search_ratio_to_default"] == pytest.approx(search)
    assert document["confirmation"] == {"pairs": 3, "ratio_median": 1.6, "ratio_min": 1.5, "ratio_max": 1.9}
    with TestClient(create_app(Settings(storage=storage, run_studies=False))) as client:
        assert client.get("/api/v1/dashboard/studies/confirm-best").json()["gain"] == pytest.approx(1.6)

    # a confirmation of another trial (the best changed after a resume) is not this best's
    study.set_user_attr(StudyAttr.CONFIRMATION, {**noisy, "best_trial_number": outcome.best_trial + 100})
    document = best_document(storage, "confirm-best")
    assert document["ratio_source"] == "search" and document["ratio_to_default"] == pytest.approx(search)
    assert document["confirmation"] is None
    with TestClient(create_app(Settings(storage=storage, run_studies=False))) as client:
        assert client.get("/api/v1/dashboard/studies/confirm-best").json()["gain"] == pytest.approx(search)
