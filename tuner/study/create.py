"""Creating a study in the storage (or resuming it by name) with its spec stored once."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.storage.rdb import open_storage, resolve_storage_url
from tuner.study.attrs import StudyAttr
from tuner.study.results import study_spec
from tuner.study.samplers import grid_axes
from tuner.study.spec import StudySpec

if TYPE_CHECKING:
    import optuna

    from tuner.space.search_space import SearchSpace
    from tuner.workloads.base import Workload


def resolve_spec(spec: StudySpec, workload: Workload) -> StudySpec:
    """`spec` with its `workload_params` resolved by `workload` (defaults filled, checked).

    The one place a study's params are resolved: the loop, every trial request, the
    runner, the ranks and the executors use the result as is. Raises `WorkloadError`
    naming each bad param, before anything is written.
    """
    from tuner.study.hparams import workload_hparam_problems

    resolved = dataclasses.replace(spec, workload_params=workload.resolve_params(spec.workload_params))
    problems = workload_hparam_problems(spec.space, workload)  # a run study's hparams are the workload's
    if problems:
        raise ValidationError(problems)
    return resolved


def _spec_conflicts(stored_spec: StudySpec, spec: StudySpec, workload: Workload) -> list[FieldProblem]:
    """Fields that must not change when a study is resumed (they define what is measured).

    `spec` is resolved. A study stored before specs were resolved on creation has its
    params as the user gave them; those are resolved here before comparing, so the same
    study is not refused for having been stored unresolved.
    """
    problems = []
    stored, new = stored_spec.to_dict(), spec.to_dict()  # compared as stored, so messages show the stored form
    for key in ("workload", "objectives", "workload_params", "budget", "space"):
        if stored[key] == new[key]:
            continue
        if key == "workload_params" and _resolves_to(workload, stored[key], new[key]):
            continue
        problems.append(
            FieldProblem(
                key,
                new[key],
                f"differs from the stored study's {key} ({stored[key]!r}); its trials would not compare",
                "resume with the same settings, or start a new study with another --study name",
            )
        )
    return problems


def _resolves_to(workload: Workload, stored_params: Any, resolved: dict[str, Any]) -> bool:
    if not isinstance(stored_params, dict):
        return False
    try:
        # resolving the stored (older, unresolved) spec's params: legacy data only
        return workload.resolve_params(stored_params) == resolved
    except ValidationError:
        return False


def create_study(
    spec: StudySpec, storage: str | None = None, *, resume: bool = True, workload: Workload | None = None
) -> optuna.Study:
    """Create study `spec.name` (or load it when it exists and `resume`), store the spec
    with its params resolved.

    Used by callers that create a study for `tuner worker` processes to run (and by the
    service). `run_study` resolves the spec itself and calls `open_study`.
    """
    from tuner.workloads import get_workload

    workload = workload or get_workload(spec.workload)
    return open_study(resolve_spec(spec, workload), storage, resume=resume, workload=workload)


def open_study(
    spec: StudySpec,
    storage: str | None = None,
    *,
    resume: bool = True,
    workload: Workload,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create study `spec.name` (or load it when it exists and `resume`), store the spec.

    `spec` must be resolved (`resolve_spec`). The study is loaded once, with `sampler`
    and `pruner` (None: Optuna's defaults), so the caller can use it as returned. A
    conditional grid is enqueued point by point here, once.
    """
    import optuna

    rdb = open_storage(storage)
    existing = {s.study_name for s in rdb.get_all_studies()}
    if spec.name in existing:
        if not resume:
            raise ValidationError(
                FieldProblem(
                    "study",
                    spec.name,
                    f"already exists in {resolve_storage_url(storage)}",
                    "pick another --study name, or allow resuming it",
                )
            )
        study = optuna.load_study(study_name=spec.name, storage=rdb, sampler=sampler, pruner=pruner)
        stored = study_spec(study)
        if stored is not None:
            problems = _spec_conflicts(stored, spec, workload)
            if problems:
                raise ValidationError(problems)
        if list(study.directions) != [_direction(d) for d in spec.directions]:
            raise ValidationError(
                FieldProblem(
                    "objectives",
                    list(spec.objectives),
                    "have other directions than the stored study's",
                    "resume with the same --objective, or use another --study name",
                )
            )
        # n_trials/timeout may have changed; an older spec's params are stored resolved now
        study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
        return study
    study = optuna.create_study(
        study_name=spec.name,
        storage=rdb,
        directions=spec.directions,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
    name_metrics(study, spec)
    if spec.sampler == "grid":
        # The points the loop will run: with quality knobs held (tuner.study.quality), so no
        # point sets a held knob the loop would then ignore or a micro batch it cannot keep.
        points = _held_space(spec, workload).grid()
        if grid_axes(points) is None:
            for point in points:
                study.enqueue_trial(point, skip_if_exists=True)
    return study


def _held_space(spec: StudySpec, workload: Workload) -> SearchSpace:
    from tuner.study.quality import hold_quality_knobs, reference_config

    reference = reference_config(workload.default_config(spec.workload_params), spec.space)
    return hold_quality_knobs(spec.space, spec.objectives, reference, learns=workload.learns).space


def _direction(name: str) -> Any:
    from optuna.study import StudyDirection

    return StudyDirection.MAXIMIZE if name == "maximize" else StudyDirection.MINIMIZE


def name_metrics(study: optuna.Study, spec: StudySpec) -> None:
    """Give Optuna the objectives' names, so optuna-dashboard labels its axes with them
    (not "Objective 0"). `set_metric_names` is experimental in Optuna 5: its warning is noise here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(spec.objective_names)


def quiet_optuna_logging() -> None:
    """Keep Optuna's per-trial INFO lines off the terminal; tuner prints its own progress."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
