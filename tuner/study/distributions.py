"""Optuna's stored parameter distributions, read without the caller importing Optuna
(the service's dashboard shows stored params; DESIGN.md keeps Optuna out of `api`)."""

from __future__ import annotations

from typing import Any


def distribution_from_json(text: str) -> Any:
    """The Optuna distribution stored as `text` (a trial param's `distribution_json`);
    it has `to_external_repr` (a stored value to the value shown) and, for floats and
    ints, `log`."""
    from optuna.distributions import json_to_distribution

    return json_to_distribution(text)


def categorical_choices(distribution: Any) -> tuple[Any, ...] | None:
    """The choices of a categorical distribution; None for a numeric one."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return tuple(distribution.choices)
    return None


__all__ = ["categorical_choices", "distribution_from_json"]
