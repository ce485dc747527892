"""Confirmation phase: re-measure the default config and the best config back to back.

The search measures the baseline once at the start and the best trial once somewhere in
the middle. On a shared or noisy machine one slow measurement (another job loading the
CPU while the baseline ran) makes "best vs baseline" absurd. After the search, this phase
measures (baseline, best) pairs alternately, with the same executor and budget, so each
pair's two measurements see the same machine load; the reported ratio is the MEDIAN of
the per-pair ratios (robust to one disturbed pair) with their min-max as the spread.
Three pairs by default (`DEFAULT_CONFIRM_PAIRS`): the fewest whose range says anything
about one disturbed pair. A gain whose range crosses 1.0 is not significant
(`Confirmation.significant`); the coefficient of variation of each side's measurements
says how noisy the machine was. How a gain is worded for people: `tuner.study.gain`.

Only for a single throughput objective: validation loss is deterministic for a seed,
and a multi-objective study has no single ratio to confirm.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.study.attrs import StudyAttr
from tuner.study.results import baseline_of, best_record, decode_attr, objective_value, records_of
from tuner.study.spec import StudySpec
from tuner.types import TrialResult

if TYPE_CHECKING:
    import optuna

    from tuner.executors.base import Executor
    from tuner.trial_request import TrialRequest

__all__ = [
    "DEFAULT_CONFIRM_PAIRS",
    "Confirmation",
    "ConfirmationPair",
    "check_confirm",
    "coefficient_of_variation",
    "confirm_best",
    "load_confirmation",
]

#: Back-to-back pairs measured after the search unless told otherwise (`run_study(confirm=)`,
#: `tuner tune --confirm`, the service's runner): two pairs have no middle, so one disturbed
#: pair moved the median; three keep a median that one outlier cannot move.
DEFAULT_CONFIRM_PAIRS = 3

#: trial_number of the confirmation requests: like the baseline's, not an Optuna trial.
CONFIRM_TRIAL_NUMBER = -1


def coefficient_of_variation(values: list[float] | tuple[float, ...]) -> float | None:
    """Sample standard deviation / mean of `values` (0.05: the measurements scatter about
    5% around their mean); None for fewer than two values or a non-positive mean."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


@dataclass(frozen=True)
class ConfirmationPair:
    baseline_items_per_s: float
    best_items_per_s: float

    @property
    def ratio(self) -> float:
        return self.best_items_per_s / self.baseline_items_per_s

    def to_dict(self) -> dict[str, float]:
        return {
            "baseline_items_per_s": self.baseline_items_per_s,
            "best_items_per_s": self.best_items_per_s,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class Confirmation:
    """Back-to-back (baseline, best) measurements of one best trial's config."""

    best_trial_number: int
    pairs: tuple[ConfirmationPair, ...]
    n_failed: int = 0  # pairs dropped because a measurement did not complete

    @property
    def ratio_median(self) -> float:
        return statistics.median(p.ratio for p in self.pairs)

    @property
    def ratio_min(self) -> float:
        return min(p.ratio for p in self.pairs)

    @property
    def ratio_max(self) -> float:
        return max(p.ratio for p in self.pairs)

    #: The header line of a config file that holds the default config for this reason.
    KEEP_DEFAULT_NOTE = "the default config: no trial beat it back to back"

    @property
    def default_wins(self) -> bool:
        """The default config was faster back to back: no trial beat it, so the default
        stays the recommendation (`tuner tune --output`, `tuner best`, the dashboard)."""
        return bool(self.pairs) and self.ratio_median < 1.0

    @property
    def significant(self) -> bool:
        """The one rule for "is this gain (or loss) real": at least two pairs, and every pair
        ratio on the same side of 1.0. A range that crosses (or touches) 1.0 means some
        pair measured the default at least as fast, so the median is labelled not significant."""
        return len(self.pairs) >= 2 and (self.ratio_min > 1.0 or self.ratio_max < 1.0)

    @property
    def best_cv(self) -> float | None:
        """Coefficient of variation of the best config's back-to-back measurements."""
        return coefficient_of_variation([p.best_items_per_s for p in self.pairs])

    @property
    def baseline_cv(self) -> float | None:
        """Coefficient of variation of the default config's back-to-back measurements."""
        return coefficient_of_variation([p.baseline_items_per_s for p in self.pairs])

    @property
    def baseline_median(self) -> float:
        return statistics.median(p.baseline_items_per_s for p in self.pairs)

    @property
    def best_median(self) -> float:
        return statistics.median(p.best_items_per_s for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [p.to_dict() for p in self.pairs],
            "ratio_median": self.ratio_median,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
            "best_trial_number": self.best_trial_number,
            "n_failed": self.n_failed,
            # Derived from the pairs (which `from_dict` reads back); stored for readers of the
            # study's attrs that do not run this code. Older studies lack them: recomputed.
            "significant": self.significant,
            "best_cv": self.best_cv,
            "baseline_cv": self.baseline_cv,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Confirmation:
        return cls(
            best_trial_number=int(data["best_trial_number"]),
            pairs=tuple(
                ConfirmationPair(float(p["baseline_items_per_s"]), float(p["best_items_per_s"]))
                for p in data["pairs"]
            ),
            n_failed=int(data.get("n_failed", 0)),
        )


def check_confirm(confirm: object) -> int:
    """`confirm` as a pair count, or a ValidationError naming the fix."""
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 0:
        raise ValidationError(
            [
                FieldProblem(
                    "confirm", confirm, "is not a pair count", "use an integer >= 0 (0 disables confirmation)"
                )
            ]
        )
    return confirm


def load_confirmation(study: optuna.Study, best_trial_number: int | None) -> Confirmation | None:
    """The stored confirmation, if it confirms `best_trial_number` (a resumed study whose
    best changed since must not report the old best's ratio)."""
    data = decode_attr(study.user_attrs.get(StudyAttr.CONFIRMATION))
    if not isinstance(data, dict) or best_trial_number is None:
        return None
    try:
        confirmation = Confirmation.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    if confirmation.best_trial_number != best_trial_number or not confirmation.pairs:
        return None
    return confirmation


def _throughput(result: TrialResult) -> float | None:
    value = objective_value(result, "throughput") if result.ok else None
    return value if value is not None and value > 0 else None


def confirm_best(
    spec: StudySpec,
    study: optuna.Study,
    executor: Executor,
    request_for: Any,  # (trial_number, TrialConfig) -> TrialRequest, the loop's own
    pairs: int,
    on_pair: Any = None,  # (index, n_pairs, pair or None) -> None, for progress lines
) -> Confirmation | None:
    """Measure `pairs` (baseline, best) pairs back to back and store the confirmation.

    Returns None (and stores nothing) when there is nothing to confirm: confirmation
    disabled, an objective other than a single throughput, no ok baseline, no ok best
    trial, or no pair whose two measurements both completed.
    """
    if pairs <= 0 or spec.objectives != ("throughput",):
        return None
    baseline_cfg, baseline_result = baseline_of(study)
    if baseline_cfg is None or baseline_result is None or _throughput(baseline_result) is None:
        return None
    best = best_record(records_of(study), spec.objectives)
    if best is None or best.config is None or best.result is None or _throughput(best.result) is None:
        return None
    measured: list[ConfirmationPair] = []
    n_failed = 0
    for index in range(pairs):
        # Baseline first, then best, one at a time: the two see the same machine load.
        base = _measure(executor, request_for(CONFIRM_TRIAL_NUMBER, baseline_cfg))
        top = _measure(executor, request_for(CONFIRM_TRIAL_NUMBER, best.config))
        pair = ConfirmationPair(base, top) if base is not None and top is not None else None
        if pair is None:
            n_failed += 1
        else:
            measured.append(pair)
        if on_pair is not None:
            on_pair(index + 1, pairs, pair)
    if not measured:
        return None
    confirmation = Confirmation(best_trial_number=best.number, pairs=tuple(measured), n_failed=n_failed)
    study.set_user_attr(StudyAttr.CONFIRMATION, confirmation.to_dict())
    return confirmation


def _measure(executor: Executor, request: TrialRequest) -> float | None:
    return _throughput(executor.submit(request).result())
