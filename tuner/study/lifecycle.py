"""Creating and deleting a study's Optuna half for callers that hold no Optuna objects
(the service's study routes: DESIGN.md keeps Optuna out of `api`)."""

from __future__ import annotations

from typing import Any

from tuner.errors import StudyExistsError
from tuner.study.attrs import StudyAttr
from tuner.study.spec import StudySpec


def create_optuna_study(spec: StudySpec, *, storage: Any, storage_url: str | None, run: bool) -> None:
    """Create the Optuna study for `spec` with the spec stored. `run`: the study loop's own
    creation (conditional grids enqueued) on `storage_url`; else a bare ask/tell study on
    `storage` (an open RDBStorage). `spec.workload_params` are resolved already (the
    service resolves them while validating the request), so they are not resolved again.

    All or nothing: when a step after the study's row was written fails (storing the spec,
    the workload while the grid is enqueued), the study is deleted again before the error
    goes on, so a failed creation leaves no empty "ghost" study that lists as external.
    Raises StudyExistsError when the name is taken (and then deletes nothing)."""
    import optuna

    if find_study_id(storage, spec.name) is not None:
        raise StudyExistsError(spec.name)
    try:
        from tuner.study.inference_spec import is_inference

        if run and is_inference(spec.space):
            # the inference study (tuner.study.inference_study) opens it again by name
            study = optuna.create_study(storage=storage, study_name=spec.name, directions=spec.directions)
            study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
        elif run:
            from tuner.study.create import open_study
            from tuner.workloads import get_workload

            open_study(spec, storage_url, resume=False, workload=get_workload(spec.workload))
        else:
            from tuner.study.create import name_metrics

            study = optuna.create_study(storage=storage, study_name=spec.name, directions=spec.directions)
            study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
            name_metrics(study, spec)
            if is_inference(spec.space):
                # ask/tell of serving trials: the serving views find the SLO and objectives here
                from tuner.study.inference_study import SPEC_ATTR, spec_data

                study.set_user_attr(SPEC_ATTR, spec_data(spec))
    except optuna.exceptions.DuplicatedStudyError as exc:  # created meanwhile by someone else
        raise StudyExistsError(spec.name) from exc
    except BaseException:
        delete_optuna_study(storage, spec.name)  # ours: nothing else had the name a moment ago
        raise


def find_study_id(storage: Any, name: str) -> int | None:
    """The id of study `name` in an Optuna storage, or None when there is none."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def delete_optuna_study(storage: Any, name: str) -> bool:
    """Delete the Optuna study `name` and its trials; False when there was none."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        return False
    return True


__all__ = ["create_optuna_study", "delete_optuna_study"]
