"""Time to a target validation loss, read from a trial's learning curve (pure arithmetic).

A trial of a `time_to_target` study records its validation loss at fixed item
checkpoints (`TrialResult.val_curve`: items trained, training seconds, loss). It reached
the target at the first checkpoint whose loss is at or below it; the time is the
training seconds up to that checkpoint (evaluation time excluded: how often we measure
is not a property of the config). No interpolation between checkpoints: the model is
known to be at the target only where it was measured.

A trial that did not reach it within its budget is **censored**, never dropped: its
value is `CENSORED_OFFSET_S` plus an estimate of when it would have reached it, so

- every censored trial ranks behind every trial that reached the target (no reached
  time is anywhere near 10^6 s in a tuning study), and
- censored trials still rank among themselves by how close they came: the estimate
  extends the line through the last two checkpoints (loss against seconds) to the
  target, at least the seconds already trained, at most `MAX_EXTRAPOLATION` times them
  (a flat or rising curve gets that maximum).

Used by the trial runner (a trial with `budget.target_val_loss`) and by the study (the
baseline, whose target is derived from its own curve), so both read the same number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CENSORED_OFFSET_S", "MAX_EXTRAPOLATION", "TargetTime", "target_metrics", "time_to_target"]

#: Added to a censored trial's estimate, so it ranks behind every trial that got there.
CENSORED_OFFSET_S = 1e6
#: A censored estimate is at most this many times the seconds already trained.
MAX_EXTRAPOLATION = 100.0

Point = Sequence[float | None]  # (items, seconds, val_loss)


@dataclass(frozen=True)
class TargetTime:
    """When a learning curve reached a target loss, or the censored estimate."""

    reached: bool
    seconds: float  # training seconds to the target (reached) or the estimate (censored)
    items: float  # items trained at that checkpoint (reached) or estimated
    #: the objective's value: `seconds` when reached, CENSORED_OFFSET_S + seconds otherwise
    value: float


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def time_to_target(curve: Sequence[Point], target: float) -> TargetTime | None:
    """When `curve` reached `target`, or its censored estimate; None without a measured point."""
    points = [(float(i), float(s), float(v)) for i, s, v in curve if _finite(v) and s is not None]  # type: ignore[arg-type]
    if not points:
        return None
    for items, seconds, loss in points:
        if loss <= target:
            return TargetTime(True, seconds, items, seconds)
    items, seconds, loss = points[-1]
    ceiling = max(seconds, 1e-9) * MAX_EXTRAPOLATION
    estimate = ceiling
    if len(points) >= 2:
        _, prev_seconds, prev_loss = points[-2]
        if seconds > prev_seconds and loss < prev_loss:
            rate = (prev_loss - loss) / (seconds - prev_seconds)  # loss per second, > 0
            estimate = min(ceiling, seconds + (loss - target) / rate)
    estimate = max(estimate, seconds)
    items_per_s = items / seconds if seconds > 0 else 0.0
    return TargetTime(False, estimate, estimate * items_per_s, CENSORED_OFFSET_S + estimate)


def target_metrics(curve: Sequence[Point], target: float) -> dict[str, float]:
    """The `val_metrics` entries of a curve against `target`: `time_to_target` (the
    objective value), `time_to_target_s` and `items_to_target` (measured or estimated),
    `target_reached` (1 or 0) and the `target_val_loss` itself; empty without a point."""
    found = time_to_target(curve, target)
    if found is None:
        return {}
    return {
        "time_to_target": found.value,
        "time_to_target_s": found.seconds,
        "items_to_target": found.items,
        "target_reached": 1.0 if found.reached else 0.0,
        "target_val_loss": float(target),
    }
