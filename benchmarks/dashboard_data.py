"""Studies for the dashboard's tests and benchmark, written through the real storage.

`bulk_replay_study` makes an N-trial study fast: Optuna's RandomSampler asks in an
in-memory study, each config is answered by the `replay` workload's table of real H200
measurements (`replay_result`, the same function the replay workload runs), and the user
attrs are the ones the study loop writes. The study itself is created through Optuna's
API; its finished trials are then inserted in ONE transaction through Optuna's own ORM
tables (`optuna.storages._rdb.models`). `Study.add_trials` would do the same inserts but
commit once per trial: ~13 trials/s on this shared 2-core machine, 13 minutes for 10,000.
`optuna.load_study` reads the result back like any study `tuner tune` ran (the benchmark
checks it).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

# shared/ lies beside the checkout (CI, fresh clones) or at /work/shared (team machines).
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "h200"
H200_DIR = _BESIDE if _BESIDE.is_dir() else Path("/work/shared/data/h200")
GPT_TABLE = H200_DIR / "gpt_124m.jsonl"
H200_PROBE = H200_DIR / "probe.json"
GIB = 2**30


def replay_space_dict(table: Path = GPT_TABLE) -> dict[str, Any]:
    from tuner.replay.table import load_table
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

    from tuner.hardware.profile import load_profile
    from tuner.replay.table import load_table
    from tuner.space.search_space import SearchSpace
    from tuner.storage.rdb import open_storage
    from tuner.study.attrs import StudyAttr, TrialAttr, TrialKind
    from tuner.study.spec import StudySpec
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
            TrialAttr.CONFIG: config.to_dict(),
            TrialAttr.RESULT: result.to_dict(),
            TrialAttr.KIND: TrialKind.TRIAL,
        }
        if result.peak_memory_bytes is not None:
            attrs[TrialAttr.CONSTRAINT] = [(result.peak_memory_bytes - limit) / limit]
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
    study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
    baseline = replay_result(measured, base)
    study.set_user_attr(StudyAttr.BASELINE, baseline.to_dict())
    study.set_user_attr(StudyAttr.BASELINE_CONFIG, base.to_dict())
    study.set_user_attr(StudyAttr.HARDWARE, load_profile(str(H200_PROBE)).to_dict())
    insert_finished_trials(rdb, study._study_id, frozen)
    return time.perf_counter() - started


def insert_finished_trials(rdb: Any, study_id: int, trials: list[Any]) -> None:
    """Insert finished FrozenTrials (numbered 0..n-1 after the study's existing ones) in one
    transaction, through the tables of Optuna's RDBStorage models."""
    import json

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from sqlalchemy import insert, select

    engine = rdb.engine
    with engine.begin() as conn:
        first = conn.execute(
            select(models.TrialModel.number).where(models.TrialModel.study_id == study_id).order_by(models.TrialModel.number.desc()).limit(1)
        ).scalar()
        offset = 0 if first is None else first + 1
        conn.execute(
            insert(models.TrialModel.__table__),
            [
                {"number": offset + i, "study_id": study_id, "state": t.state.name,
                 "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete}
                for i, t in enumerate(trials)
            ],
        )
        ids = dict(conn.execute(
            select(models.TrialModel.number, models.TrialModel.trial_id).where(models.TrialModel.study_id == study_id)
        ).all())
        values, params, user_attrs, system_attrs = [], [], [], []
        for i, t in enumerate(trials):
            trial_id = ids[offset + i]
            for objective, value in enumerate(t.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                values.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind.name})
            for param, value in t.params.items():
                dist = t.distributions[param]
                params.append({"trial_id": trial_id, "param_name": param, "param_value": dist.to_internal_repr(value),
                               "distribution_json": distribution_to_json(dist)})
            user_attrs += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in t.user_attrs.items()]
            system_attrs += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in t.system_attrs.items()]
        for model, rows in (
            (models.TrialValueModel, values), (models.TrialParamModel, params),
            (models.TrialUserAttributeModel, user_attrs), (models.TrialSystemAttributeModel, system_attrs),
        ):
            if rows:
                conn.execute(insert(model.__table__), rows)


def _dt(epoch: float) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(epoch)
