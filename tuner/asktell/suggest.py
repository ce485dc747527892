"""Sampling one trial config from a search space through an Optuna trial."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace


def suggest_config(space: SearchSpace, trial: Any, base: TrialConfig | None = None) -> TrialConfig:
    """Sample one config from `space` through an Optuna trial; knobs not in the space keep `base`.

    Raises the space's ValidationError when the sampled values make an invalid config."""
    return space.to_config(space.suggest(trial), base)


__all__ = ["suggest_config"]
