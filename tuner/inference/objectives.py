"""What an inference study optimises, and which of its results may be best.

- `qps_at_slo` (maximize): the highest Poisson rate the config sustains with p99 <= the
  study's `slo_p99_ms`;
- `p99_at_qps` (minimize): p99 at the study's fixed `target_qps`;
- both together: the Pareto front of QPS vs p99.

A result that is not `ok` (inaccurate, over the SLO, refused, infeasible, failed) is
never best and never on the front, whatever its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tuner.inference.result import InferenceResult

INFERENCE_OBJECTIVES: dict[str, str] = {"qps_at_slo": "maximize", "p99_at_qps": "minimize"}
#: Told to the sampler for a p99 that could not be measured (over the SLO at every rate):
#: worse than any real value without being infinite (Optuna's samplers reject inf).
WORST_P99_MS = 1e9


def eligible(result: InferenceResult, slo_p99_ms: float | None) -> bool:
    """Whether `result` may be best: it ran, it is accurate, and it met the SLO."""
    if not result.ok or result.qps <= 0 or result.p99_ms is None:
        return False
    return slo_p99_ms is None or result.p99_ms <= slo_p99_ms


def objective_values(result: InferenceResult, objectives: Sequence[str]) -> list[float]:
    values = []
    for objective in objectives:
        if objective == "qps_at_slo":
            values.append(result.qps if result.ok else 0.0)
        elif objective == "p99_at_qps":
            p99 = result.p99_at_target_ms
            values.append(p99 if result.ok and p99 is not None and math.isfinite(p99) else WORST_P99_MS)
        else:
            raise ValueError(f"not an inference objective: {objective!r}")
    return values


def best_index(results: Sequence[InferenceResult], objective: str, slo_p99_ms: float | None) -> int | None:
    """The index of the best eligible result for one objective; None when none is eligible."""
    candidates = [i for i, r in enumerate(results) if eligible(r, slo_p99_ms)]
    if objective == "p99_at_qps":
        candidates = [i for i in candidates if results[i].p99_at_target_ms is not None]
        return min(candidates, key=lambda i: results[i].p99_at_target_ms, default=None)  # type: ignore[arg-type, return-value]
    return max(candidates, key=lambda i: results[i].qps, default=None)


def pareto_front(results: Sequence[InferenceResult], slo_p99_ms: float | None) -> list[int]:
    """Indices of eligible results no other eligible one beats on both QPS (higher) and p99
    (lower; at the target rate when measured, else at the config's sustained rate)."""

    def p99(r: InferenceResult) -> float:
        return r.p99_at_target_ms if r.p99_at_target_ms is not None else (r.p99_ms or math.inf)

    candidates = [i for i, r in enumerate(results) if eligible(r, slo_p99_ms)]
    front = []
    for i in candidates:
        a = results[i]
        dominated = any(
            results[j].qps >= a.qps
            and p99(results[j]) <= p99(a)
            and (results[j].qps > a.qps or p99(results[j]) < p99(a))
            for j in candidates
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: results[i].qps)
