"""Studies for the dashboard's tests and benchmark, written through the real storage.

`bulk_replay_study` makes an N-trial study fast: Optuna's RandomSampler asks in an
in-memory study, each config is answered by the `replay` workload's table of real H200
measurements (`replay_result`, the same function the replay workload runs), the user
attrs are the ones the study loop writes, and the finished trials are then added to the
RDBStorage with `Study.add_trials` (one insert per trial, no sampler in the way). The
result reads exactly like a study `tuner tune` ran: same attrs, same states.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

GPT_TABLE = Path("/work/shared/data/h200/gpt_124m.jsonl")
H200_PROBE = Path("/work/shared/data/h200/probe.json")
GIB = 2**30


def replay_space_dict(table: Path = GPT_TABLE) -> dict[str, Any]:
    from tuner.replay_table import load_table
    from tuner.workloads.replay import replay_space

    return replay_space(load_table(str(table))).to_dict()


def bulk_replay_study(
    storage_url: str,
    name: str,
    n_trials: int,
    *,
    table: Path = GPT_TABLE,
    memory_limit_gib: float = 100.0,
    seed: int = 0,
) -> float:
    """Write an `n_trials` replay study into `storage_url`; returns the seconds it took."""
    import optuna

    from tuner.profile import load_profile
    from tuner.replay_table import load_table
    from tuner.space import SearchSpace
    from tuner.storage import open_storage
    from tuner.study_results import ATTR_BASELINE_CONFIG, ATTR_CONSTRAINT, ATTR_KIND, ATTR_STATUS, KIND_TRIAL
    from tuner.study_spec import ATTR_BASELINE, ATTR_HARDWARE, ATTR_SPEC, ATTR_TRIAL_CONFIG, ATTR_TRIAL_RESULT, StudySpec
    from tuner.workloads.replay import replay_result, replay_space

    started = time.perf_counter()
    measured = load_table(str(table))
    space: SearchSpace = replay_space(measured)
    limit = int(memory_limit_gib * GIB)
    spec = StudySpec(
        name=name, workload="replay", space=space, workload_params={"table": str(table)},
        objectives=("throughput",), sampler="random", n_trials=n_trials, memory_limit_bytes=limit, use_generator=False,
    )
    base = measured.config_of(measured.rows[0])
    scratch = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    clock = time.time() - n_trials * 2.0
    frozen = []
    for _ in range(n_trials):
        trial = scratch.ask()
        config = space.to_config(space.suggest(trial), base)
        result = replay_result(measured, config)
        attrs: dict[str, Any] = {
            ATTR_TRIAL_CONFIG: config.to_dict(),
            ATTR_TRIAL_RESULT: result.to_dict(),
            ATTR_STATUS: result.status.value,
            ATTR_KIND: KIND_TRIAL,
        }
        if result.peak_memory_bytes is not None:
            attrs[ATTR_CONSTRAINT] = [(result.peak_memory_bytes - limit) / limit]
        ok = result.status.value == "ok" and result.items_per_s is not None and math.isfinite(result.items_per_s)
        state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
        duration = result.duration_s or rng.uniform(0.5, 3.0)
        start = clock
        clock += duration + 0.05
        frozen.append(
            optuna.trial.FrozenTrial(
                number=trial.number, trial_id=trial._trial_id, state=state,
                value=result.items_per_s if ok else None, values=None,
                datetime_start=_dt(start), datetime_complete=_dt(clock),
                params=trial.params, distributions=trial.distributions, user_attrs=attrs,
                system_attrs={} if ok else {"fail_reason": result.reason or result.status.value},
                intermediate_values={}, 
            )
        )
        scratch.tell(trial, state=optuna.trial.TrialState.FAIL)  # scratch only feeds the sampler

    rdb = open_storage(storage_url)
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize")
    study.set_user_attr(ATTR_SPEC, spec.to_dict())
    baseline = replay_result(measured, base)
    study.set_user_attr(ATTR_BASELINE, baseline.to_dict())
    study.set_user_attr(ATTR_BASELINE_CONFIG, base.to_dict())
    study.set_user_attr(ATTR_HARDWARE, load_profile(str(H200_PROBE)).to_dict())
    study.add_trials(frozen)
    return time.perf_counter() - started


def _dt(epoch: float) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(epoch)
