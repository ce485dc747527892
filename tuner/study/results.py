"""Read studies back from Optuna storage as tuner types (for the CLI, the service, resume).

Optuna keeps the sampler's view (params, objective values, states). Everything tuner
measured lives in user attributes under the `tuner.` keys of `tuner.study.spec`, so any
process that can open the database — `tuner studies`, the REST service, a resumed
study — rebuilds the same `TrialConfig`s and `TrialResult`s.

Optuna state mapping written by the study loop:

| tuner status | Optuna state | counts toward n_trials |
| --- | --- | --- |
| ok | COMPLETE (values; `constraint` > 0 when over the memory limit) | yes |
| oom, failed | FAIL | yes |
| pruned | PRUNED | yes |
| infeasible (predicted not to fit, never launched) | PRUNED, `constraint` > 0 | no |
| failed by the quality guard (diverged, reason starts "quality:"; `tuner.study.quality`) | FAIL | yes |
| abandoned (its process died; resumed studies re-run it) | FAIL | no |
| surplus (a concurrent worker overshot n_trials; never launched) | FAIL | no |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.errors import StudyNotFoundError, TunerError
from tuner.inference.config import InferenceConfig, stored_config
from tuner.inference.objectives import INFERENCE_OBJECTIVES
from tuner.storage.rdb import open_storage, resolve_storage_url
from tuner.study.attrs import StudyAttr, TrialAttr, TrialKind
from tuner.study.objectives import objective_direction, objective_name
from tuner.study.quality import diverged
from tuner.study.spec import OBJECTIVES, StudySpec
from tuner.types import TrialConfig, TrialResult, TrialStatus

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial




class NoFeasibleTrialError(TunerError, LookupError):
    """A study exists but has no completed trial within its constraints yet."""

    retryable = True  # a running study may produce one


@dataclass(frozen=True)
class TrialRecord:
    """One Optuna trial as tuner sees it."""

    number: int
    state: str  # Optuna state name: COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    status: TrialStatus | None  # None while running or for trials tuner did not write
    kind: str
    config: TrialConfig | InferenceConfig | None  # InferenceConfig: an ask/tell serving trial
    result: TrialResult | None
    values: tuple[float, ...] | None
    feasible: bool
    duration_s: float | None
    # What the sampler drew, types kept: knobs and the user's hyperparameters alike.
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def hparams(self) -> dict[str, Any]:
        """The drawn values that are not knobs: the space's `hparams:` (names there are
        never knob names, so this needs no spec)."""
        return hparams_among(self.params)

    @property
    def counts_toward_target(self) -> bool:
        """Whether this trial uses up one of the study's n_trials."""
        if self.state == "WAITING" or self.kind != TrialKind.TRIAL:
            return False
        return self.status is not TrialStatus.INFEASIBLE


@dataclass(frozen=True)
class StudySummary:
    """One row of `tuner studies`."""

    name: str
    workload: str | None
    objectives: tuple[str, ...]
    n_trials_target: int | None
    n_done: int  # trials that finished and count toward the target
    n_running: int
    best_value: float | None  # single-objective only
    n_pareto: int  # multi-objective only
    status: str  # "done" | "running" | "stopped"
    storage: str


def hparams_among(params: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a trial's params that are hyperparameters (not knobs), in order."""
    from tuner.knobs import KNOBS

    return {k: v for k, v in params.items() if k not in KNOBS}


def decode_attr(value: Any) -> Any:
    """User attrs written as JSON strings by other writers are accepted too."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def objective_value(result: TrialResult, objective: str) -> float | None:
    """The number an objective optimises, read from a trial's result."""
    if objective == "throughput":
        return result.items_per_s
    if objective in ("val_loss", "quality_at_budget"):
        return result.val_loss
    if ":" in objective or objective in INFERENCE_OBJECTIVES:
        # a user objective (tuner.study.objectives) or a serving one told through ask/tell:
        # kept in metrics under its name
        value = result.metrics.get(objective_name(objective))
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if objective in ("time_to_target", "auc", "perplexity"):  # tuner.study.quality_budget
        return result.val_metrics.get(objective)
    raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


def trial_status(attrs: dict[str, Any]) -> TrialStatus | None:
    """A trial's tuner status, from its stored result (None while it runs)."""
    result = decode_attr(attrs.get(TrialAttr.RESULT))
    status = result.get("status") if isinstance(result, dict) else None
    try:
        return TrialStatus(status) if status else None
    except ValueError:
        return None


def config_from_attr(data: Any) -> TrialConfig | InferenceConfig | None:
    """A trial's stored config: a serving config (ask/tell of a `kind: inference` space:
    its dict has `serving_precision`) or a training one; None when there is none."""
    return stored_config(data) if isinstance(data, dict) else None


def trial_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    config_data = decode_attr(attrs.get(TrialAttr.CONFIG))
    result_data = decode_attr(attrs.get(TrialAttr.RESULT))
    status = trial_status(attrs)
    duration = None
    if trial.datetime_start and trial.datetime_complete:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    constraint = attrs.get(TrialAttr.CONSTRAINT, (0.0,))
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        status=status,
        kind=attrs.get(TrialAttr.KIND, TrialKind.TRIAL),
        config=config_from_attr(config_data),
        result=TrialResult.from_dict(result_data) if isinstance(result_data, dict) else None,
        values=tuple(trial.values) if trial.values is not None else None,
        feasible=all(c <= 0 for c in constraint),
        duration_s=duration,
        params=dict(trial.params),
    )


def load_optuna_study(storage: str | None, name: str) -> optuna.Study:
    """Load study `name`, or raise StudyNotFoundError listing the studies that exist."""
    import optuna

    rdb = open_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in rdb.get_all_studies())
        where = resolve_storage_url(storage)
        available = ", ".join(names) if names else "(none)"
        raise StudyNotFoundError(
            f"no study named {name!r} in {where}; available: {available}. "
            "Run `tuner studies --storage URL` to list them."
        ) from None


def spec_from_attr(value: Any) -> StudySpec | None:
    """The `tuner.spec` user attr's value as a StudySpec; None when it is absent or not one.

    The attr is the one stored copy of a study's spec (the service's table has none since
    revision 0004), so the CLI, workers, the service and the dashboard all read it here.
    """
    data = decode_attr(value)
    if not isinstance(data, dict):
        return None
    try:
        return StudySpec.from_dict(data)
    except (TunerError, TypeError, ValueError, KeyError, AttributeError):
        return None  # written by another tool or a tuner too old to read: no spec, as for plain Optuna studies


def study_spec(study: optuna.Study) -> StudySpec | None:
    """The spec `study` was created with (None for studies tuner did not create)."""
    return spec_from_attr(study.user_attrs.get(StudyAttr.SPEC))


def baseline_of(study: optuna.Study) -> tuple[TrialConfig | None, TrialResult | None]:
    result = decode_attr(study.user_attrs.get(StudyAttr.BASELINE))
    config = decode_attr(study.user_attrs.get(StudyAttr.BASELINE_CONFIG))
    return (
        TrialConfig.from_dict(config) if isinstance(config, dict) else None,
        TrialResult.from_dict(result) if isinstance(result, dict) else None,
    )


def records_of(study: optuna.Study) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]


def _eligible(records: list[TrialRecord]) -> list[TrialRecord]:
    """Completed, measured, within the memory limit, not diverged: the only trials that may
    be 'best'. The study loop records diverged trials failed (`tuner.study.quality`); the
    check here also covers trials told by other writers (ask/tell, older tuner versions)."""
    return [
        r
        for r in records
        if r.state == "COMPLETE"
        and r.feasible
        and r.result is not None
        and r.config is not None
        and diverged(r.result) is None
    ]


def best_record(records: list[TrialRecord], objectives: tuple[str, ...]) -> TrialRecord | None:
    """Best eligible trial on the first objective (for multi-objective: the Pareto point
    that is best on the first objective)."""
    candidates = pareto_records(records, objectives) if len(objectives) > 1 else _eligible(records)
    objective = objectives[0]
    sign = 1.0 if objective_direction(objective, OBJECTIVES) == "maximize" else -1.0
    scored = [
        (sign * value, -r.number, r)
        for r in candidates
        if (value := objective_value(r.result, objective)) is not None  # type: ignore[arg-type]
    ]
    return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None


def pareto_records(records: list[TrialRecord], objectives: tuple[str, ...]) -> list[TrialRecord]:
    """Eligible trials that no other eligible trial dominates on every objective."""
    points = []
    for r in _eligible(records):
        vals = [objective_value(r.result, o) for o in objectives]  # type: ignore[arg-type]
        if any(v is None for v in vals):
            continue
        # Turn every objective into "bigger is better" for the dominance test.
        points.append(
            (r, [v if objective_direction(o, OBJECTIVES) == "maximize" else -v for v, o in zip(vals, objectives, strict=True)])
        )
    front = []
    for r, p in points:
        dominated = any(
            all(a >= b for a, b in zip(q, p, strict=True)) and any(a > b for a, b in zip(q, p, strict=True))
            for _, q in points
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.number)


def improvement_ratio(best: TrialResult | None, baseline: TrialResult | None, objective: str) -> float | None:
    """How many times better `best` is than `baseline` on `objective` (>1 is better).

    Throughput: best / baseline. Validation loss: baseline / best (an improvement factor).
    """
    if best is None or baseline is None or not baseline.ok:
        return None
    b = objective_value(best, objective)
    base = objective_value(baseline, objective)
    if b is None or base is None or b <= 0 or base <= 0:
        return None
    return b / base if objective_direction(objective, OBJECTIVES) == "maximize" else base / b


def load_best(storage: str | None, name: str) -> tuple[TrialConfig, TrialResult]:
    """The best config of study `name` and what it measured."""
    study = load_optuna_study(storage, name)
    spec = study_spec(study)
    objectives = spec.objectives if spec is not None else ("throughput",)
    best = best_record(records_of(study), objectives)
    if best is None:
        raise NoFeasibleTrialError(
            f"study {name!r} has no completed trial within its constraints yet; "
            "run more trials (`tuner tune ... --study NAME` resumes it) or relax --memory-limit"
        )
    assert best.config is not None and best.result is not None
    return best.config, best.result


def summarize(study_summary: Any, storage_url: str) -> StudySummary:
    import optuna

    study = optuna.load_study(study_name=study_summary.study_name, storage=open_storage(storage_url))
    spec = study_spec(study)
    objectives = spec.objectives if spec is not None else ()
    records = records_of(study)
    n_done = sum(1 for r in records if r.counts_toward_target and r.state != "RUNNING")
    n_running = sum(1 for r in records if r.state == "RUNNING")
    target = spec.n_trials if spec is not None else None
    best_value = None
    n_pareto = 0
    if len(objectives) == 1:
        best = best_record(records, objectives)
        if best is not None and best.result is not None:
            best_value = objective_value(best.result, objectives[0])
    elif len(objectives) > 1:
        n_pareto = len(pareto_records(records, objectives))
    if n_running:
        status = "running"
    elif target is not None and n_done >= target:
        status = "done"
    else:
        status = "stopped"
    return StudySummary(
        name=study_summary.study_name,
        workload=spec.workload if spec is not None else None,
        objectives=objectives,
        n_trials_target=target,
        n_done=n_done,
        n_running=n_running,
        best_value=best_value,
        n_pareto=n_pareto,
        status=status,
        storage=storage_url,
    )


def list_studies(storage: str | None = None) -> list[StudySummary]:
    """Every study in `storage`, in creation order."""
    import optuna

    from tuner.storage.optuna_private import summary_study_id

    url = resolve_storage_url(storage)
    summaries = optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)
    return [summarize(s, url) for s in sorted(summaries, key=summary_study_id)]
