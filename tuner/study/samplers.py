"""Build the Optuna sampler and pruner a `StudySpec` names.

Constraint handling: the study loop stores each trial's constraint values in the trial
user attribute `constraint` (<= 0 feasible, > 0 violated: measured or predicted peak
memory over the limit). Samplers that support `constraints_func` (TPE, NSGA-II, GP) read
it so they learn to stay under the limit; the others still never report such a trial as
best because the loop filters on the same attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.study.attrs import TrialAttr

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tuner.space.search_space import SearchSpace
    from tuner.study.spec import StudySpec



def trial_constraints(trial: FrozenTrial) -> Sequence[float]:
    """`constraints_func` for Optuna samplers: the stored constraint, feasible when absent."""
    return trial.user_attrs.get(TrialAttr.CONSTRAINT, (0.0,))


def is_feasible_trial(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial_constraints(trial))


def grid_axes(points: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """Per-parameter value lists whose Cartesian product is exactly `points`, or None.

    A space with conditions (a parameter active only for some values of another) has no
    such product; those grids are enqueued point by point instead of using GridSampler.
    """
    if not points:
        return None
    keys = set(points[0])
    if any(set(p) != keys for p in points):
        return None
    axes: dict[str, list[Any]] = {}
    for key in sorted(keys):
        seen: list[Any] = []
        for p in points:
            if p[key] not in seen:
                seen.append(p[key])
        axes[key] = seen
    size = 1
    for values in axes.values():
        size *= len(values)
    return axes if size == len(points) else None


def make_sampler(
    spec: StudySpec, space: SearchSpace, grid_points: list[dict[str, Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler of `spec.sampler`, seeded with `spec.seed` for reproducible searches."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with warnings.catch_warnings():
        # Optuna 5 deprecates `constraints_func` (removal planned for 7.0) in favour of
        # `Trial.set_constraint`, which stores constraints as trial *system* attrs. Ours
        # live in the `constraint` user attr that the dashboard, the REST writer and the
        # sampler replica read too, and must keep working on Optuna 4, so the move is a
        # storage-format change of its own; until then the warning is noise to users.
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        return _make_sampler(spec, space, grid_points)


def _make_sampler(
    spec: StudySpec, space: SearchSpace, grid_points: list[dict[str, Any]] | None
) -> optuna.samplers.BaseSampler:
    import optuna

    name = spec.sampler
    seed = spec.seed
    constrained = spec.memory_limit_bytes is not None
    constraints = trial_constraints if constrained else None
    if name == "tpe":
        # multivariate models the knobs jointly; group splits the search into the
        # sub-spaces of conditional knobs (loss_scale only under fp16). group costs ~30%
        # of each ask, so it is on only when the space has conditions. constant_liar
        # keeps concurrent workers apart.
        conditional = any(param.when is not None for param in space.params)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=conditional,
            constant_liar=True,
            n_startup_trials=min(10, max(2, (spec.n_trials or 20) // 3)),
            constraints_func=constraints,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        _require("gp", "scipy")
        return optuna.samplers.GPSampler(
            seed=seed, constraints_func=constraints, warn_independent_sampling=False
        )
    if name == "cmaes":
        _require("cmaes", "cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        population = max(4, min(50, (spec.n_trials or 50) // 4))
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=population, constraints_func=constraints
        )
    if name == "grid":
        axes = grid_axes(grid_points if grid_points is not None else space.grid())
        if axes is not None:
            return _ask_tell_grid_sampler()(axes, seed=seed)
        # Conditional grid: the loop enqueues every point; random fills nothing in practice.
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValidationError(
        FieldProblem("sampler", name, "is not a sampler", "use tpe, random, gp, cmaes, nsga2 or grid")
    )


def _ask_tell_grid_sampler() -> type:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler whose `after_trial` does not call `study.stop()`, which raises
        outside `study.optimize`; the study loop checks `is_exhausted` itself."""

        def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
            return None

    return AskTellGridSampler


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner of `spec.pruner`; multi-objective studies never prune (Optuna can't)."""
    import optuna

    if spec.multi_objective or spec.pruner == "none":
        return optuna.pruners.NopPruner()
    steps = max(1, spec.budget.max_steps)
    if spec.pruner == "median":
        # Compare only after a few trials; warm-up steps are never reported (see study.py).
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if spec.pruner == "hyperband":
        budget = spec.budget
        if budget.eval_every_items is not None:
            # Reports are validation checkpoints: the resource is the checkpoint index.
            checkpoints = -(-budget.max_items // budget.eval_every_items) if budget.max_items else "auto"
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=checkpoints, reduction_factor=3)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps, reduction_factor=3)
    raise ValidationError(
        FieldProblem("pruner", spec.pruner, "is not a pruner", "use median, hyperband or none")
    )


def _require(sampler: str, module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValidationError(
            FieldProblem(
                "sampler",
                sampler,
                f"needs the Python package {module!r}, which is not installed",
                f"pip install {module}, or use --sampler tpe",
            )
        )
