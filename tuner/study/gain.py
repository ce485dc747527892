"""The gain over the default config, as people are told it: ONE figure and ONE wording.

`tuner tune`, `tuner best`, `tuner export` and the dashboard (study card, studies list,
trial page) all state a study's gain, and they used to disagree: the card showed the
back-to-back confirmation's median beside the search-time values without saying so, the
trial page computed its own search-time ratio. Every one of them now shows what
`describe_gain` returns, so they cannot drift:

- confirmed:  "x1.74, median of 3 back-to-back pairs, range 1.21-2.28, not significant"
- search:     "x1.31, search-time single measurement (no confirmation)"

`Gain.search_text` is the search-time ratio worded for showing BESIDE a confirmed figure
(the trial page of the best trial), never instead of it. Significance is the
confirmation's own rule (`Confirmation.significant`), not decided here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.study.spec import OBJECTIVES

if TYPE_CHECKING:
    from tuner.study.confirm import Confirmation

__all__ = ["Gain", "describe_gain", "ratio_of"]

SEARCH_TIME = "search-time single measurement"
NOT_SIGNIFICANT = "not significant"


@dataclass(frozen=True)
class Gain:
    """How many times better the reported config is than the default (>1: better), and
    which measurement says so."""

    value: float | None  # None: there is no ratio (`text` says why)
    source: str  # "confirmation" | "search" | "none"
    figure: str | None  # "x1.74"
    description: str  # "median of 3 back-to-back pairs, range 1.21-2.28, not significant"
    text: str  # figure + ", " + description: the one line every place shows
    significant: bool | None  # the confirmation's verdict; None without a confirmation
    pairs: int | None = None
    ratio_range: tuple[float, float] | None = None
    best_cv: float | None = None  # coefficient of variation of the best's back-to-back runs
    baseline_cv: float | None = None  # ... and of the default config's
    noise: str | None = None  # "run-to-run variation (CV): best 3.1%, default 12.0% over 3 runs each"
    measured: str | None = None  # "back to back: best 126,500 vs default 72,700 tokens/s (medians)"
    search_ratio: float | None = None
    search_text: str | None = None  # "search-time single measurement: x1.31", beside a confirmation

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "source": self.source,
            "figure": self.figure,
            "description": self.description,
            "text": self.text,
            "significant": self.significant,
            "pairs": self.pairs,
            "ratio_range": list(self.ratio_range) if self.ratio_range else None,
            "best_cv": self.best_cv,
            "baseline_cv": self.baseline_cv,
            "noise": self.noise,
            "measured": self.measured,
            "search_ratio": self.search_ratio,
            "search_text": self.search_text,
        }


def ratio_of(best_value: float | None, baseline_value: float | None, objective: str) -> float | None:
    """How many times better `best_value` is than `baseline_value` on `objective` (>1:
    better): best / default for throughput, default / best for a loss."""
    if best_value is None or baseline_value is None or best_value <= 0 or baseline_value <= 0:
        return None
    return best_value / baseline_value if OBJECTIVES.get(objective, "maximize") == "maximize" else baseline_value / best_value


def _figure(ratio: float) -> str:
    return f"x{ratio:.2f}"


def _value(value: float, objective: str) -> str:
    return f"{value:,.0f}" if objective == "throughput" else f"{value:.4f}"


def _units(objective: str, unit: str) -> str:
    return f"{unit}/s" if objective == "throughput" else objective


def describe_gain(
    objective: str,
    *,
    confirmation: Confirmation | None,
    best_value: float | None,
    baseline_value: float | None,
    unit: str = "items",
    missing: str | None = None,
) -> Gain:
    """The gain of the best config over the default on `objective`, worded once.

    `confirmation`: the back-to-back confirmation of this best (throughput only; the caller
    checks it confirms this best). `best_value`, `baseline_value`: the search-time single
    measurements. `unit`: what throughput counts ("tokens"). `missing`: why there is no
    ratio, when the caller knows better than "the default config was not measured".
    """
    search = ratio_of(best_value, baseline_value, objective)
    search_measured = (
        f"best {_value(best_value, objective)} vs default {_value(baseline_value, objective)} "
        f"{_units(objective, unit)}"
        if search is not None and best_value is not None and baseline_value is not None
        else None
    )
    if confirmation is not None and confirmation.pairs and objective == "throughput":
        n = len(confirmation.pairs)
        low, high = confirmation.ratio_min, confirmation.ratio_max
        parts = [f"median of {n} back-to-back pair{'s' if n != 1 else ''}", f"range {low:.2f}-{high:.2f}"]
        if not confirmation.significant:
            parts.append(NOT_SIGNIFICANT)
        description = ", ".join(parts)
        figure = _figure(confirmation.ratio_median)
        best_cv, baseline_cv = confirmation.best_cv, confirmation.baseline_cv
        noise = (
            f"run-to-run variation (CV): best {best_cv:.1%}, default {baseline_cv:.1%} over {n} runs each"
            if best_cv is not None and baseline_cv is not None
            else None
        )
        return Gain(
            value=confirmation.ratio_median,
            source="confirmation",
            figure=figure,
            description=description,
            text=f"{figure}, {description}",
            significant=confirmation.significant,
            pairs=n,
            ratio_range=(low, high),
            best_cv=best_cv,
            baseline_cv=baseline_cv,
            noise=noise,
            measured=(
                f"back to back: best {confirmation.best_median:,.0f} vs default "
                f"{confirmation.baseline_median:,.0f} {unit}/s (medians)"
            ),
            search_ratio=search,
            search_text=f"{SEARCH_TIME}: {_figure(search)}" if search is not None else None,
        )
    if search is not None:
        lower = "" if objective == "throughput" else f"lower {objective}, "
        description = f"{lower}{SEARCH_TIME} (no confirmation)"
        return _search_gain(search, description, search_measured)
    reason = missing or (
        "no ratio: the default config was not measured"
        if baseline_value is None
        else "no ratio: no measured value to compare"
    )
    return Gain(value=None, source="none", figure=None, description=reason, text=reason, significant=None)


def _search_gain(ratio: float, description: str, measured: str | None) -> Gain:
    """A gain read from the study's own measurements (no back-to-back confirmation)."""
    figure = _figure(ratio)
    return Gain(
        value=ratio,
        source="search",
        figure=figure,
        description=description,
        text=f"{figure}, {description}",
        significant=None,
        measured=measured,
        search_ratio=ratio,
    )


def describe_qps_gain(
    best_qps: float | None, baseline_qps: float | None, slo_p99_ms: float, *, missing: str | None = None
) -> Gain:
    """The gain of an inference study's best serving config: QPS at p99 <= the SLO, best /
    the default config's (fp32, batch 1, eager, no batching), both measured in the same
    run by the same rate ramp and stored as the study counted them (the median of repeated
    measurements where it re-measured the default and a new best:
    tuner.study.inference_study). Worded once, for `tuner tune --json` readers and the pages."""
    if best_qps is not None and baseline_qps is not None and best_qps > 0 and baseline_qps > 0:
        ratio = best_qps / baseline_qps
        description = (
            f"QPS at p99 <= {slo_p99_ms:g} ms vs the default config, measured in the study's run "
            "(medians where it re-measured; no back-to-back pairs)"
        )
        return _search_gain(ratio, description, f"best {best_qps:,.0f} vs default {baseline_qps:,.0f} QPS at the SLO")
    reason = missing or "no ratio: no config met the SLO accurately"
    return Gain(value=None, source="none", figure=None, description=reason, text=reason, significant=None)
