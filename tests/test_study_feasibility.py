"""The study loop never launches a config the generator predicts not to fit.

A replay study on the measured H200 table (the generator predicts memory for the H200
that measured it, `probe.json` beside the table) under a 48 GiB memory limit, over a grid
of micro batch x activation checkpointing in bf16. The generator keeps micro batch 64 in
the space (with checkpointing it is predicted to fit: ~41 GiB) but predicts micro batch 64
WITHOUT checkpointing at ~60 GiB, over the 43.2 GiB allowed (48 GiB with the 90% safety
margin). That one grid point must be recorded `infeasible` without being run; the
workload counts the configs it was really asked to run.

It is also the fastest config of the table (377k tokens/s), so were it run and
mis-recorded it could be reported best.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.shared_data import H200_DIR
from tuner.executors.inline import InlineExecutor
from tuner.hardware.profile import load_profile
from tuner.space import load_space
from tuner.study import run_study
from tuner.study.attrs import TrialAttr
from tuner.study.results import records_of
from tuner.study.spec import StudySpec
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import register_workload
from tuner.workloads.replay import ReplayWorkload

H200_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "h200" / "gpt_124m.jsonl"
if not H200_TABLE.exists():
    H200_TABLE = H200_DIR / "gpt_124m.jsonl"

GiB = 2**30
LIMIT = 48 * GiB
TOO_BIG = {"micro_batch_size": 64, "precision": "bf16", "activation_checkpointing": False}

_ran: list[dict[str, Any]] = []
_ran_lock = threading.Lock()


@register_workload
class CountingReplay(ReplayWorkload):
    """Replay that records every config it is asked to run (InlineExecutor: same process)."""

    name = "replay-feasibility-recorder"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        config = request.config
        with _ran_lock:
            _ran.append(
                {
                    "micro_batch_size": config.micro_batch_size,
                    "precision": config.precision,
                    "activation_checkpointing": config.activation_checkpointing,
                }
            )
        return super().run_trial(request, reporter)


def _knobs(config: TrialConfig) -> dict[str, Any]:
    return {
        "micro_batch_size": config.micro_batch_size,
        "precision": config.precision,
        "activation_checkpointing": config.activation_checkpointing,
    }


def test_a_config_predicted_not_to_fit_is_recorded_infeasible_and_never_run(tmp_path):
    _ran.clear()
    storage = f"sqlite:///{tmp_path / 'tuner.db'}"
    space = load_space(
        {
            "name": "feasibility",
            "workload": "replay-feasibility-recorder",
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
                "precision": {"type": "categorical", "choices": ["bf16"]},
                "activation_checkpointing": {"type": "categorical", "choices": [False, True]},
            },
        }
    )
    spec = StudySpec(
        name="feasibility",
        workload="replay-feasibility-recorder",
        space=space,
        workload_params={"table": str(H200_TABLE)},
        n_trials=8,  # the whole grid, were every point to count
        budget=TrialBudget(max_steps=4, warmup_steps=2),
        use_generator=True,
        sampler="grid",
        memory_limit_bytes=LIMIT,
        baseline=False,
    )
    hardware = load_profile(H200_TABLE.parent / "probe.json")
    with InlineExecutor(1) as executor:
        outcome = run_study(spec, storage=storage, executor=executor, hardware=hardware, confirm=0)

    trials = optuna.load_study(study_name="feasibility", storage=storage).get_trials()
    configs = {t.number: _knobs(TrialConfig.from_dict(t.user_attrs[TrialAttr.CONFIG])) for t in trials}
    results = {t.number: TrialResult.from_dict(t.user_attrs[TrialAttr.RESULT]) for t in trials}
    # The whole grid was proposed, each point once (a grid proposal is never repeated).
    assert sorted(tuple(c.values()) for c in configs.values()) == sorted(
        (mb, "bf16", ck) for mb in (8, 16, 32, 64) for ck in (False, True)
    )
    too_big = [t for t in trials if configs[t.number] == TOO_BIG]
    assert len(too_big) == 1
    rejected = too_big[0]

    # Recorded infeasible, with the prediction over the limit, and told to Optuna as pruned
    # with a violated constraint (constraint-aware samplers learn from it).
    result = results[rejected.number]
    assert result.status is TrialStatus.INFEASIBLE, result
    assert "predicted not to fit" in (result.reason or "")
    assert result.predicted_peak_bytes is not None and result.predicted_peak_bytes > 0.9 * LIMIT
    assert result.items_per_s is None and result.peak_memory_bytes is None  # nothing measured
    assert rejected.state.name == "PRUNED" and rejected.values is None
    assert rejected.user_attrs[TrialAttr.CONSTRAINT][0] > 0

    # Never launched: the workload ran exactly the 7 other grid points, each once.
    assert TOO_BIG not in _ran, _ran
    assert sorted(tuple(c.values()) for c in _ran) == sorted(
        tuple(configs[t.number].values()) for t in trials if t.number != rejected.number
    )
    assert len(_ran) == 7
    others = [results[t.number] for t in trials if t.number != rejected.number]
    assert all(r.status is TrialStatus.OK for r in others)

    # Infeasible proposals do not count toward n_trials: 7 of 8 counted, the grid ran out.
    assert outcome.n_infeasible == 1 and outcome.n_complete == 7
    assert outcome.stopped_because == "grid exhausted"
    records = records_of(optuna.load_study(study_name="feasibility", storage=storage))
    assert [r.status for r in records if r.number == rejected.number] == [TrialStatus.INFEASIBLE]
    assert not next(r for r in records if r.number == rejected.number).counts_toward_target

    # Never reported best; the best is the fastest config that was run and fits the limit.
    assert outcome.best_trial != rejected.number
    assert _knobs(outcome.best_config) != TOO_BIG
    measured_ok = [r for r in records if r.status is TrialStatus.OK and r.feasible]
    fastest = max(measured_ok, key=lambda r: r.result.items_per_s)
    assert outcome.best_trial == fastest.number
    assert outcome.best_result.peak_memory_bytes <= LIMIT
    assert _knobs(outcome.best_config) == {
        "micro_batch_size": 32,
        "precision": "bf16",
        "activation_checkpointing": False,
    }
    assert outcome.best_result.items_per_s == pytest.approx(fastest.result.items_per_s)
