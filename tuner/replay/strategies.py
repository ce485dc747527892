"""Compare search strategies on a measured table, trial by trial.

Strategies:
- `tpe`, `random`, `grid`: plain Optuna samplers over `replay_space(table)`, seeded, with
  no hardware knowledge. An out-of-memory trial scores 0 items/s.
- `tuner`: the full strategy. The config generator (hardware profile + memory model)
  narrows the space and proposes starting configs, which run first; a config predicted
  not to fit is recorded `infeasible` and never run (it costs no trial); every measured
  trial calibrates the memory model; then a seeded TPE continues in the narrowed space,
  still behind the calibrated memory constraint. A config it measured already is not
  measured again (answered from its own history, not counted).

For every strategy a config the table lacks is reported (`not in table`) and not counted:
the table cannot say what it would have done.

This module imports optuna (search layer); the CLI imports it inside `run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.replay.table import ReplayTable
from tuner.types import TrialConfig, TrialStatus
from tuner.workloads.replay import NOT_IN_TABLE, replay_result, replay_space

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile
    from tuner.space.search_space import SearchSpace

STRATEGIES: tuple[str, ...] = ("tuner", "tpe", "random", "grid")
TARGET_SHARE = 0.95
#: Suggestions a run may discard (infeasible, duplicate, not in table) per counted trial
#: before it stops: a small space can run out of new configs.
MAX_ASKS_PER_TRIAL = 10


@dataclass(frozen=True)
class ReplayRecord:
    """One suggestion of a strategy and what happened to it."""

    trial: int | None  # 1-based number of the counted trial; None when not counted
    config: dict[str, Any]  # the values of the space's parameters
    status: str  # ok | oom | failed | infeasible
    counted: bool
    items_per_s: float | None = None
    peak_bytes: int | None = None
    predicted_bytes: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplaySummary:
    strategy: str
    seed: int
    trials: int
    trials_to_95pct: int | None
    oom_trials: int
    best_items_per_s: float | None
    table_best_items_per_s: float
    infeasible_skipped: int = 0
    not_in_table_skipped: int = 0
    repeats_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"summary": True, **asdict(self)}


def _sampler(strategy: str, space: SearchSpace, seed: int) -> Any:
    import optuna

    if strategy in ("tpe", "tuner"):
        return optuna.samplers.TPESampler(seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {p.name: list(p.finite_values() or ()) for p in space.params if p.distribution() is not None}
    return optuna.samplers.GridSampler(grid, seed=seed)


def run_strategy(
    table: ReplayTable,
    strategy: str,
    *,
    trials: int,
    seed: int = 0,
    hardware: HardwareProfile | None = None,
    on_record: Callable[[ReplayRecord], None] | None = None,
) -> tuple[list[ReplayRecord], ReplaySummary]:
    """Run `strategy` for `trials` counted trials on `table`; return every record and the summary."""
    import optuna
    from optuna.trial import TrialState

    _check_arguments(strategy, trials, hardware)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    full_space = replay_space(table)
    base = TrialConfig()
    generated = None
    space = full_space
    if strategy == "tuner":
        from tuner.generator.planner import plan

        assert hardware is not None
        generated = plan(hardware, table.shape, full_space, workload=table.workload, base_config=base)
        space = generated.space
    study = optuna.create_study(direction="maximize", sampler=_sampler(strategy, space, seed))
    grid_size = len(space.grid()) if strategy == "grid" else None
    # The tuner never repeats a config, so it stops once every config of its (finite)
    # narrowed space was measured, predicted infeasible or found missing from the table.
    unexplored = {table.key_of(space.to_config(v, base)) for v in space.grid()} if generated else set()
    records: list[ReplayRecord] = []
    measured: dict[tuple[Any, ...], float] = {}
    target = TARGET_SHARE * (table.best_ok().items_per_s or 0.0)
    counted = asks = oom = infeasible = missing = repeats = 0
    best: float | None = None
    reached: int | None = None

    def emit(record: ReplayRecord) -> None:
        records.append(record)
        if on_record:
            on_record(record)

    while counted < trials and asks < MAX_ASKS_PER_TRIAL * trials + 50:
        if grid_size is not None and len(study.trials) >= grid_size:
            break  # every grid point was tried
        if generated is not None and not unexplored:
            break  # nothing new left to try
        asks += 1
        if generated is not None:
            start = generated.next_starting_config()
            if start is not None:
                study.enqueue_trial(start)
        trial = study.ask()
        values = space.suggest(trial)
        config = space.to_config(values, base)
        key = table.key_of(config)
        unexplored.discard(key)
        predicted = None
        if generated is not None:
            feasible, estimate = generated.is_feasible(config)
            predicted = estimate.peak_bytes
            if not feasible:
                infeasible += 1
                emit(
                    ReplayRecord(
                        None, values, TrialStatus.INFEASIBLE.value, False, predicted_bytes=predicted,
                        reason=f"predicted {predicted / 1024**3:.1f} GiB > {estimate.limit_bytes / 1024**3:.1f} GiB allowed"
                        if estimate.limit_bytes else "predicted not to fit",
                    )
                )
                if not _tell(study, trial, 0.0):
                    break
                continue
            if key in measured:
                repeats += 1
                if not _tell(study, trial, measured[key]):
                    break
                continue
        result = replay_result(table, config)
        if result.status is TrialStatus.FAILED and (result.reason or "").startswith(NOT_IN_TABLE):
            missing += 1
            if generated is not None:
                generated.observe(config, None, result.status)
            emit(ReplayRecord(None, values, result.status.value, False, predicted_bytes=predicted, reason=result.reason))
            if not _tell(study, trial, None, state=TrialState.FAIL):
                break
            continue
        counted += 1
        value = float(result.items_per_s or 0.0) if result.ok else 0.0
        if result.status is TrialStatus.OOM:
            oom += 1
        if result.ok:
            best = value if best is None else max(best, value)
            if reached is None and value >= target:
                reached = counted
        measured[key] = value
        if generated is not None:
            generated.observe(config, result.peak_memory_bytes, result.status)
        emit(
            ReplayRecord(
                counted, values, result.status.value, True, items_per_s=result.items_per_s,
                peak_bytes=result.peak_memory_bytes, predicted_bytes=predicted, reason=result.reason,
            )
        )
        if not _tell(study, trial, value):
            break
    summary = ReplaySummary(
        strategy=strategy,
        seed=seed,
        trials=counted,
        trials_to_95pct=reached,
        oom_trials=oom,
        best_items_per_s=best,
        table_best_items_per_s=float(table.best_ok().items_per_s or 0.0),
        infeasible_skipped=infeasible,
        not_in_table_skipped=missing,
        repeats_skipped=repeats,
    )
    return records, summary


def _tell(study: Any, trial: Any, value: float | None, state: Any = None) -> bool:
    """Tell Optuna a result; False when the sampler asked to stop (GridSampler, grid exhausted)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:  # GridSampler calls study.stop(), legal only inside optimize()
        if "Study.stop" not in str(exc):
            raise
        return False  # the value was stored before the sampler's hook raised
    return True


def _check_arguments(strategy: str, trials: int, hardware: HardwareProfile | None) -> None:
    problems = []
    if strategy not in STRATEGIES:
        problems.append(FieldProblem("strategy", strategy, "is not a strategy", "use one of: " + ", ".join(STRATEGIES)))
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        problems.append(FieldProblem("trials", trials, "must be an integer >= 1", "e.g. --trials 20"))
    if strategy == "tuner" and hardware is None:
        problems.append(
            FieldProblem(
                "hardware",
                None,
                "is required by strategy tuner: without the device's memory it cannot tell which configs fit",
                "pass --hardware with the profile of the machine that measured the table (e.g. shared/data/h200/probe.json)",
            )
        )
    if problems:
        raise ValidationError(problems)


def median(values: list[float | None], *, missing: float = math.inf) -> float:
    """Median where a run that never reached the target counts as infinitely many trials."""
    ordered = sorted(missing if v is None else float(v) for v in values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
