"""Creating a study in the storage (or resuming it by name) with its spec stored once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.storage.rdb import open_storage, resolve_storage_url
from tuner.study.attrs import StudyAttr
from tuner.study.results import study_spec
from tuner.study.samplers import grid_axes
from tuner.study.spec import StudySpec

if TYPE_CHECKING:
    import optuna

    from tuner.workloads.base import Workload


def _spec_conflicts(stored_spec: StudySpec, spec: StudySpec) -> list[FieldProblem]:
    """Fields that must not change when a study is resumed (they define what is measured)."""
    problems = []
    stored, new = stored_spec.to_dict(), spec.to_dict()  # compared as stored, so messages show the stored form
    for key in ("workload", "objectives", "workload_params", "budget", "space"):
        if stored[key] != new[key]:
            problems.append(
                FieldProblem(
                    key,
                    new[key],
                    f"differs from the stored study's {key} ({stored[key]!r}); its trials would not compare",
                    "resume with the same settings, or start a new study with another --study name",
                )
            )
    return problems


def create_study(
    spec: StudySpec, storage: str | None = None, *, resume: bool = True, workload: Workload | None = None
) -> optuna.Study:
    """Create study `spec.name` (or load it when it exists and `resume`), store the spec.

    Used by `run_study`, and by callers that create a study for `tuner worker` processes
    to run. A conditional grid is enqueued point by point here, once.
    """
    import optuna

    from tuner.workloads import get_workload

    workload = workload or get_workload(spec.workload)
    workload.resolve_params(spec.workload_params)  # reject bad params before any DB write
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
        study = optuna.load_study(study_name=spec.name, storage=rdb, sampler=None)
        stored = study_spec(study)
        if stored is not None:
            problems = _spec_conflicts(stored, spec)
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
        study.set_user_attr(StudyAttr.SPEC, spec.to_dict())  # n_trials/timeout may have changed
        return study
    study = optuna.create_study(
        study_name=spec.name, storage=rdb, directions=spec.directions, load_if_exists=True
    )
    study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
    if spec.sampler == "grid":
        points = spec.space.grid()
        if grid_axes(points) is None:
            for point in points:
                study.enqueue_trial(point, skip_if_exists=True)
    return study


def _direction(name: str) -> Any:
    from optuna.study import StudyDirection

    return StudyDirection.MAXIMIZE if name == "maximize" else StudyDirection.MINIMIZE


def quiet_optuna_logging() -> None:
    """Keep Optuna's per-trial INFO lines off the terminal; tuner prints its own progress."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
