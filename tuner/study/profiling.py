"""Profile a study's trial (its best by default) and keep the report with the study.

`profile_trial` rebuilds the trial's config and the study's workload from what the study
stored, runs `tuner.trial.profiler.profile_config` on this machine, and saves the report
as the study user attr `tuner.profile.<trial number>` (Optuna cannot change the user
attrs of a finished trial). The REST API and the dashboard merge it into that trial's
telemetry as `telemetry["profile"]`, where the trial page renders its hotspots.

torch loads only when a profile is actually taken, and optuna only through
`tuner.study.results`, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.study.attrs import StudyAttr
from tuner.study.results import (
    best_record,
    decode_attr,
    load_optuna_study,
    records_of,
    study_spec,
)

if TYPE_CHECKING:
    import optuna

    from tuner.study.results import TrialRecord

__all__ = ["profile_attr_key", "profile_trial", "stored_profile"]


def profile_attr_key(trial_number: int) -> str:
    """The study user attr under which trial `trial_number`'s profile is stored."""
    return f"{StudyAttr.PROFILE_PREFIX}{int(trial_number)}"


def stored_profile(study: optuna.Study, trial_number: int) -> dict[str, Any] | None:
    """The profile stored for trial `trial_number` of `study`, or None if it has none."""
    report = decode_attr(study.user_attrs.get(profile_attr_key(trial_number)))
    return report if isinstance(report, dict) else None


def _chosen_record(
    study_name: str, records: list[TrialRecord], objectives: tuple[str, ...], trial_number: int | None
) -> TrialRecord:
    if not records:
        raise ValidationError(
            FieldProblem(
                "study",
                study_name,
                "has no trials",
                f"run trials first: `tuner tune ... --study {study_name}`",
            )
        )
    if trial_number is None:
        # Multi-objective: best_record picks the Pareto point best on the first objective,
        # the same trial `tuner tune` and `tuner best` call best.
        best = best_record(records, objectives)
        if best is None:
            raise ValidationError(
                FieldProblem(
                    "trial",
                    None,
                    f"study {study_name!r} has no completed trial within its constraints to call best",
                    "pass --trial N to profile a specific trial, or run more trials",
                )
            )
        return best
    by_number = {r.number: r for r in records}
    record = by_number.get(trial_number)
    if record is None:
        known = sorted(by_number)
        raise ValidationError(
            FieldProblem(
                "trial",
                trial_number,
                f"is not a trial of study {study_name!r}",
                f"use a trial number from {known[0]} to {known[-1]} (`tuner studies` / the dashboard list them)",
            )
        )
    if record.config is None:
        raise ValidationError(
            FieldProblem(
                "trial",
                trial_number,
                f"has no stored config (state {record.state}; it never started or was not written by tuner)",
                "profile a trial that ran, e.g. the best one (omit --trial)",
            )
        )
    return record


def profile_trial(
    storage: str | None,
    study_name: str,
    trial_number: int | None = None,
    *,
    steps: int = 5,
    warmup_steps: int = 1,
    device: str = "auto",
    seed: int = 0,
    top_k: int = 15,
) -> tuple[int, dict[str, Any]]:
    """Profile trial `trial_number` of study `study_name` (default: its best trial), store
    the report with the study and return (trial number, report).

    Raises ValidationError (field, value, fix) for a study without trials, an unknown
    trial, a trial without a config, or a workload that does not train (replay).
    """
    from tuner.workloads import TrainableWorkload, get_workload

    study = load_optuna_study(storage, study_name)
    spec = study_spec(study)
    if spec is None:
        raise ValidationError(
            FieldProblem(
                "study",
                study_name,
                "has no tuner study spec (it was not created by tuner), so its workload is unknown",
                "profile the config directly: `tuner profile --workload NAME --config JSON`",
            )
        )
    workload = get_workload(spec.workload)
    if not isinstance(workload, TrainableWorkload):
        raise ValidationError(
            FieldProblem(
                "workload",
                spec.workload,
                f"of study {study_name!r} does not train a model here (it answers from a table), "
                "so there is nothing to profile",
                "profile a study of a trainable workload such as gpt or recsys, or run "
                "`tuner profile --workload gpt --config JSON` for the config",
            )
        )
    objectives = spec.objectives
    record = _chosen_record(study_name, records_of(study), objectives, trial_number)
    assert record.config is not None  # _chosen_record only returns trials with a config
    # A stored spec, resolved when it was created; a study stored before specs were
    # resolved has the user's raw params, so they are resolved here (a no-op otherwise).
    params = workload.resolve_params(spec.workload_params)

    from tuner.trial.profiler import profile_config

    report = profile_config(
        workload,
        record.config,
        params,
        steps=steps,
        device=device,
        seed=seed,
        warmup_steps=warmup_steps,
        top_k=top_k,
    )
    report["study"] = study_name
    report["trial_number"] = record.number
    study.set_user_attr(profile_attr_key(record.number), report)
    return record.number, report
