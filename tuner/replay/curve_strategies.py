"""Compare search strategies for `time_to_target` on a learning-curve table, in seconds.

Every strategy gets the same budget of simulated search seconds: a trial costs the
training seconds of the checkpoints it ran (the table's own measurements), and trials
run one after another until the budget is spent. A trial's value is its time to the
target (`tuner.trial.target`: censored trials ranked behind, by their estimate).

- `tuner`: TPE, the validation checkpoints go to a median pruner, and a trial stops at
  the checkpoint that reaches the target (what `time_to_target` studies do);
- `hyperband`: the same with Optuna's HyperbandPruner over the checkpoints;
- `tpe`, `random`: plain samplers, every trial trains its whole curve.

A config the table lacks is skipped (not counted, no seconds). Summary: search seconds
until some trial had reached the target, and the best time to the target found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.replay.curves import CurveRow, CurveTable
from tuner.space.search_space import SearchSpace
from tuner.trial.target import time_to_target
from tuner.types import TrialConfig

CURVE_STRATEGIES: tuple[str, ...] = ("tuner", "hyperband", "tpe", "random")


@dataclass(frozen=True)
class CurveRecord:
    trial: int
    config: dict[str, Any]
    state: str  # complete | pruned | not in table
    checkpoints_run: int
    seconds: float  # simulated training seconds this trial cost
    value: float | None  # time to target (censored estimate above 1e6)
    clock_s: float  # simulated search seconds when it ended

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CurveSummary:
    strategy: str
    seed: int
    budget_s: float
    trials: int
    pruned: int
    target_val_loss: float
    search_s_to_target: float | None  # simulated seconds until a trial had reached the target
    best_time_to_target_s: float | None  # the best reached time (None: no trial reached it)
    table_best_time_to_target_s: float | None
    default_time_to_target_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"summary": True, **asdict(self)}


def curve_space(table: CurveTable) -> SearchSpace:
    """A categorical space over the values the table varies."""
    params = {name: {"type": "categorical", "choices": table.knob_values(name)} for name in table.knob_names}
    return SearchSpace.from_dict({"name": "curves", "params": params}, source=table.path)


def _sampler(strategy: str, seed: int) -> Any:
    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)


def _pruner(strategy: str, checkpoints: int) -> Any:
    import optuna

    if strategy == "tuner":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if strategy == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, checkpoints), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _row_time(row: CurveRow, target: float) -> float | None:
    found = time_to_target(row.curve, target) if row.ok else None
    return found.seconds if found is not None and found.reached else None


def run_curve_strategy(
    table: CurveTable,
    strategy: str,
    *,
    budget_s: float,
    seed: int = 0,
    on_record: Callable[[CurveRecord], None] | None = None,
) -> tuple[list[CurveRecord], CurveSummary]:
    """Run `strategy` for `budget_s` simulated search seconds on `table`."""
    import optuna
    from optuna.trial import TrialState

    problems = []
    if strategy not in CURVE_STRATEGIES:
        problems.append(FieldProblem("strategy", strategy, "is not a curve strategy", "use one of: " + ", ".join(CURVE_STRATEGIES)))
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0 or not math.isfinite(budget_s):
        problems.append(FieldProblem("budget_s", budget_s, "must be a number of seconds > 0", "e.g. --budget-seconds 120"))
    if problems:
        raise ValidationError(problems)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = table.target
    space = curve_space(table)
    checkpoints = max(len(r.curve) for r in table.rows if r.ok)
    study = optuna.create_study(direction="minimize", sampler=_sampler(strategy, seed), pruner=_pruner(strategy, checkpoints))
    stops_at_target = strategy in ("tuner", "hyperband")
    records: list[CurveRecord] = []
    clock = 0.0
    first_reach: float | None = None
    best: float | None = None
    trials = pruned = misses = 0
    while clock < budget_s and misses < 200:
        trial = study.ask()
        values = space.suggest(trial)
        row = table.find(space.to_config(values, TrialConfig()))
        if row is None or not row.ok:
            misses += 1
            study.tell(trial, state=TrialState.FAIL)
            continue
        trials += 1
        state, spent, ran = "complete", 0.0, 0
        for index, (_, seconds, loss) in enumerate(row.curve, start=1):
            ran, spent = index, seconds
            if stops_at_target and loss <= target:
                break
            trial.report(loss, index)
            if trial.should_prune():
                state = "pruned"
                break
        seen = row.curve[:ran]
        found = time_to_target(seen, target)
        value = found.value if found is not None else None
        if found is not None and found.reached:
            reached_at = clock + found.seconds
            first_reach = reached_at if first_reach is None else min(first_reach, reached_at)
            best = found.seconds if best is None else min(best, found.seconds)
        clock += spent
        if state == "pruned":
            pruned += 1
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
        record = CurveRecord(trials, values, state, ran, spent, value, clock)
        records.append(record)
        if on_record is not None:
            on_record(record)
    times = [t for r in table.rows if (t := _row_time(r, target)) is not None]
    default = table.default_row
    summary = CurveSummary(
        strategy=strategy,
        seed=seed,
        budget_s=float(budget_s),
        trials=trials,
        pruned=pruned,
        target_val_loss=target,
        search_s_to_target=first_reach,
        best_time_to_target_s=best,
        table_best_time_to_target_s=min(times) if times else None,
        default_time_to_target_s=_row_time(default, target) if default is not None else None,
    )
    return records, summary
