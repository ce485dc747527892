"""A workload study's hyperparameters (the space's `hparams:` section) and what they change.

How a trial carries its hparams: Optuna samples knobs and hparams alike (`trial.params`
holds both, with their types); `SearchSpace.to_config` keeps only the knobs (the
`TrialConfig`), `SearchSpace.hparams_of` only the hparams. In a study that runs a
workload (CLI, `tuner worker`, `run: true` over REST) the hparams must be the workload's
own tunable params (`WorkloadParam.tunable`); each trial's `TrialRequest.params` are the
study's resolved params overridden by the trial's hparams, resolved again (so the
workload's cross-checks, e.g. heads dividing d_model, still hold), and the memory model
predicts each trial with the shape those params give. In an ask/tell study hparams may
have any name: they are the user's to apply (`AskedTrial.params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace
    from tuner.workloads.base import Workload


def workload_hparam_problems(space: SearchSpace, workload: Workload) -> list[FieldProblem]:
    """Problems of `space`'s hparams for a study that runs `workload`: each must be one of
    the workload's tunable params, over values that param allows."""
    tunable = {p.name: p for p in workload.params if p.tunable}
    names = ", ".join(tunable) or "(none)"
    problems: list[FieldProblem] = []
    for param in space.params:
        if not param.hparam:
            continue
        declared = tunable.get(param.name)
        if declared is None:
            problems.append(
                FieldProblem(
                    param.field,
                    param.name,
                    f"is not a tunable hyperparameter of workload {workload.name!r}",
                    f"use one of: {names} (see `tuner workloads`); any name is fine in an ask/tell study",
                )
            )
            continue
        values = param.finite_values()
        bounds = param.bounds()
        edges = values if values is not None else (bounds if bounds is not None else ())
        for value in edges:
            why = declared.check(value)
            if why:
                problems.append(
                    FieldProblem(param.field, value, f"{why} for workload {workload.name}'s {param.name}", declared.help or "narrow the range")
                )
                break
    return problems


def trial_params(workload: Workload, params: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The params one trial runs with: the study's resolved `params` overridden by the
    trial's `hparams`, resolved again. Raises the workload's WorkloadError when the
    combination is not a valid model (e.g. heads not dividing d_model)."""
    if not hparams:
        return dict(params)
    return workload.resolve_params({**params, **hparams})


def shape_hparams(workload: Workload, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hparams among `hparams` that change the model's shape (memory prediction)."""
    changing = {p.name for p in workload.params if p.changes_shape}
    return {k: v for k, v in hparams.items() if k in changing}


def plan_for_shape(plan: Any, workload: Workload, params: Mapping[str, Any], cache: dict[Any, Any]) -> Any:
    """The generator plan with its memory model rebuilt for the model shape `params` give
    (one per distinct shape, cached, so each shape keeps its own calibration)."""
    from tuner.generator.calibration import MemoryModel

    key = tuple(sorted(shape_hparams(workload, params).items()))
    if key not in cache:
        shape = dict(workload.shape(params))
        if "seq" in plan.shape:  # the plan fixed the sequence (the knob's value) for this study
            shape["seq"] = plan.shape["seq"]
        memory = MemoryModel(
            shape, workload=plan.workload, hardware=plan.memory.hardware, limit_bytes=plan.memory.limit_bytes
        )
        cache[key] = dataclasses.replace(plan, memory=memory, shape=shape, _tried=set())
    return cache[key]


def invalid_combination(exc: ValidationError) -> str:
    """The reason recorded for a trial whose hparams make no valid model."""
    return "hparams make no valid model: " + "; ".join(str(p) for p in exc.problems)


__all__ = ["invalid_combination", "plan_for_shape", "shape_hparams", "trial_params", "workload_hparam_problems"]
