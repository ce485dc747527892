"""Parameter importance with Optuna's own evaluators, over params and objective values
the caller already has (the dashboard's cached trials), so the caller needs no Optuna."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Evaluator names `param_importances` accepts.
EVALUATORS = ("ped_anova", "fanova")


def param_importances(
    points: Sequence[tuple[Mapping[str, Any], float | None]],
    distributions: Mapping[str, Any],
    direction: str,
    evaluator: str,
) -> dict[str, float]:
    """Normalized importance of each parameter in `distributions` (parsed with
    `tuner.study.distributions.distribution_from_json`), from (params, objective value)
    points that each set all of them.

    Raises ImportError when the evaluator's dependency is missing (fANOVA needs
    scikit-learn), RuntimeError or ValueError when it cannot run on these points."""
    import optuna
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    trials = [
        optuna.trial.create_trial(
            params={n: params[n] for n in distributions},
            distributions=dict(distributions),
            value=value,
        )
        for params, value in points
    ]
    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    chosen = PedAnovaImportanceEvaluator() if evaluator == "ped_anova" else FanovaImportanceEvaluator(seed=0)
    result = get_param_importances(study, evaluator=chosen, normalize=True)
    return {name: float(value) for name, value in result.items()}


__all__ = ["EVALUATORS", "param_importances"]
