"""`StudyOutcome`: what a finished (or stopped) study found, read back from its storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.study.attrs import TrialKind
from tuner.study.confirm import Confirmation, load_confirmation
from tuner.study.gain import Gain, describe_gain
from tuner.study.results import (
    TrialRecord,
    baseline_of,
    best_record,
    improvement_ratio,
    objective_value,
    pareto_records,
    records_of,
)
from tuner.study.spec import StudySpec
from tuner.types import TrialConfig, TrialResult, TrialStatus

if TYPE_CHECKING:
    import optuna

    from tuner.study.hardware_plan import StudyGenerator


@dataclass(frozen=True)
class StudyOutcome:
    """What a study found. Counts cover the whole study, including earlier runs."""

    study_name: str
    storage: str
    objectives: tuple[str, ...]
    best_config: TrialConfig | None
    best_result: TrialResult | None
    best_trial: int | None
    baseline_config: TrialConfig | None
    baseline_result: TrialResult | None
    # The reported best-vs-baseline ratio on the first objective (>1: better): the median
    # of the confirmation pairs when a confirmation ran, else `search_ratio`.
    ratio: float | None
    pareto: list[tuple[TrialConfig, TrialResult]]
    n_complete: int
    n_failed: int
    n_pruned: int
    n_infeasible: int
    n_oom: int
    duration_s: float
    stopped_because: str  # "n_trials" | "timeout" | "stopped" | "grid exhausted" | …
    generator_reasoning: tuple[str, ...] = ()
    search_ratio: float | None = None  # best trial's single measurement / the baseline's
    ratio_range: tuple[float, float] | None = None  # min-max of the confirmation pair ratios
    confirmation: Confirmation | None = None
    # What a throughput study held at the default config's values, and why (tuner.study.quality).
    held_knobs: tuple[str, ...] = ()
    # The best trial's own hyperparameters (the space's hparams:), types kept.
    best_hparams: dict[str, Any] = field(default_factory=dict)
    # Trials failed because their process or worker host was lost (kind `abandoned`): not
    # counted toward n_trials, their configs run again (tuner.study.recovery).
    n_abandoned: int = 0

    @property
    def default_wins(self) -> bool:
        """True when the back-to-back confirmation measured the default config faster
        than the best trial: the search found nothing better than what the user had."""
        return (
            self.confirmation is not None
            and self.confirmation.default_wins
            and self.baseline_config is not None
        )

    @property
    def gain(self) -> Gain:
        """The reported gain over the default config, worded as every place shows it."""
        return result_gain(self.objectives[0], self.confirmation, self.best_result, self.baseline_result)

    @property
    def recommended_config(self) -> TrialConfig | None:
        """The config to use: the best trial's, unless the default config beat it back to
        back (a search-time win that does not repeat is noise, not a gain)."""
        return self.baseline_config if self.default_wins else self.best_config


def result_gain(
    objective: str,
    confirmation: Confirmation | None,
    best: TrialResult | None,
    baseline: TrialResult | None,
) -> Gain:
    """`describe_gain` from a best trial's and the baseline's results (`tuner tune`,
    `tuner best`), saying why there is no ratio when there is none."""
    if best is None:
        missing = "no completed trial"
    elif baseline is None:
        missing = "no baseline measured (--no-baseline), so no ratio to the default config"
    elif not baseline.ok:
        missing = f"the default config did not run ({baseline.status.value}: {baseline.reason}), so there is no ratio"
    else:
        missing = "no ratio: the baseline measured no value for the objective"
    return describe_gain(
        objective,
        confirmation=confirmation if objective == "throughput" else None,
        best_value=objective_value(best, objective) if best is not None else None,
        baseline_value=objective_value(baseline, objective) if baseline is not None and baseline.ok else None,
        unit=best.item_unit if best is not None else "items",
        missing=missing,
    )


def study_outcome(
    spec: StudySpec,
    study: optuna.Study,
    url: str,
    duration_s: float,
    stopped_because: str,
    generator: StudyGenerator | None,
    held_knobs: tuple[str, ...] = (),
) -> StudyOutcome:
    records: list[TrialRecord] = records_of(study)
    best = best_record(records, spec.objectives)
    baseline_cfg, baseline_result = baseline_of(study)
    pareto = (
        [(r.config, r.result) for r in pareto_records(records, spec.objectives)]
        if spec.multi_objective
        else []
    )
    counted = [r for r in records if r.kind == TrialKind.TRIAL]

    def count(status: TrialStatus) -> int:
        return sum(1 for r in counted if r.status is status)

    search_ratio = improvement_ratio(best.result if best else None, baseline_result, spec.objectives[0])
    confirmation = (
        load_confirmation(study, best.number if best else None)
        if spec.objectives == ("throughput",)
        else None
    )

    return StudyOutcome(
        study_name=spec.name,
        storage=url,
        objectives=spec.objectives,
        best_config=best.config if best else None,
        best_result=best.result if best else None,
        best_trial=best.number if best else None,
        best_hparams=spec.space.hparams_of(best.params) if best else {},
        baseline_config=baseline_cfg,
        baseline_result=baseline_result,
        ratio=confirmation.ratio_median if confirmation else search_ratio,
        pareto=pareto,  # type: ignore[arg-type]
        n_complete=count(TrialStatus.OK),
        n_failed=count(TrialStatus.FAILED),
        n_pruned=count(TrialStatus.PRUNED),
        n_infeasible=count(TrialStatus.INFEASIBLE),
        n_oom=count(TrialStatus.OOM),
        n_abandoned=sum(1 for r in records if r.kind == TrialKind.ABANDONED),
        duration_s=duration_s,
        stopped_because=stopped_because,
        generator_reasoning=generator.reasoning if generator else (),
        search_ratio=search_ratio,
        ratio_range=(confirmation.ratio_min, confirmation.ratio_max) if confirmation else None,
        confirmation=confirmation,
        held_knobs=held_knobs,
    )
