"""Parameter importance with Optuna's own evaluators, on a capped sample, cached per study.

fANOVA fits a random forest: seconds at 10,000 trials, far too slow to run on each poll.
So importance is computed on at most `MAX_TRIALS` evenly spaced complete trials and kept
until the study has grown by `RECOMPUTE_GROWTH` (or `RECOMPUTE_AFTER_S` passed while it
changed). PED-ANOVA is the default: no scikit-learn needed, and fast.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from api.dashboard.store import StudyView
from api.dashboard.views import eligible, objective_value
from tuner.errors import FieldProblem, ValidationError
from tuner.study.distributions import distribution_from_json
from tuner.study.importance import EVALUATORS, param_importances

MAX_TRIALS = 1000
RECOMPUTE_GROWTH = 0.1
RECOMPUTE_AFTER_S = 30.0
MIN_TRIALS = 4


@dataclass
class _Cached:
    n_complete: int
    computed_at: float
    answer: dict[str, Any]


class ImportanceCache:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._lock = threading.Lock()

    def get(self, view: StudyView, evaluator: str) -> dict[str, Any]:
        if evaluator not in EVALUATORS:
            raise ValidationError(FieldProblem("evaluator", evaluator, "is not an importance evaluator", "use one of: " + ", ".join(EVALUATORS)))
        trials = eligible(view)
        key = (view.name, evaluator)
        with self._lock:
            cached = self._cache.get(key)
        n = len(trials)
        if cached is not None and not _stale(cached, n):
            return cached.answer
        answer = compute(view, evaluator)
        with self._lock:
            self._cache[key] = _Cached(n, time.monotonic(), answer)
        return answer


def _stale(cached: _Cached, n: int) -> bool:
    if n == cached.n_complete:
        return False
    grown = n >= cached.n_complete * (1 + RECOMPUTE_GROWTH) or n - cached.n_complete >= 20
    return grown or cached.n_complete < MIN_TRIALS or time.monotonic() - cached.computed_at > RECOMPUTE_AFTER_S


def compute(view: StudyView, evaluator: str) -> dict[str, Any]:
    trials = eligible(view)
    step = max(1, math.ceil(len(trials) / MAX_TRIALS))
    sample = trials[::step]
    distributions = {name: distribution_from_json(d) for name, d in view.distributions.items()}
    base = {"evaluator": evaluator, "used_trials": len(sample), "complete_trials": len(trials), "objective": view.objectives[0]}
    # A parameter that never varies has no importance to measure (and breaks fANOVA).
    varied = [n for n in distributions if len({repr(t.params.get(n)) for t in sample}) > 1]
    if len(sample) < MIN_TRIALS or not varied:
        return {**base, "importances": [], "note": f"needs at least {MIN_TRIALS} complete trials that vary a parameter"}
    points = [(t.params, objective_value(t)) for t in sample if all(n in t.params for n in varied)]
    direction = view.directions[0] if view.directions else "maximize"
    try:
        result = param_importances(points, {n: distributions[n] for n in varied}, direction, evaluator)
    except ImportError:
        return {**base, "importances": [], "note": f"{evaluator} needs scikit-learn on the server: pip install scikit-learn"}
    except (RuntimeError, ValueError) as exc:
        return {**base, "importances": [], "note": f"{evaluator} could not run: {exc}"}
    return {**base, "importances": [{"param": k, "importance": v} for k, v in result.items()]}
