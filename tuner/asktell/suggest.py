"""Sampling one trial config from a search space through an Optuna trial.

A `kind: inference` space gives an `InferenceConfig` (the serving knobs, defaults for
those outside the space: the untuned server); any other space a `TrialConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.inference.config import InferenceConfig
from tuner.study.inference_spec import is_inference
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

AskedConfig = TrialConfig | InferenceConfig


def suggest_config(space: SearchSpace, trial: Any, base: AskedConfig | None = None) -> AskedConfig:
    """Sample one config from `space` through an Optuna trial; knobs not in the space keep `base`.

    Raises the space's ValidationError when the sampled values make an invalid config."""
    if is_inference(space):
        start = base if isinstance(base, InferenceConfig) else InferenceConfig()
        return InferenceConfig.from_dict({**start.to_dict(), **space.suggest(trial)}, source=space.name)
    assert not isinstance(base, InferenceConfig)
    return space.to_config(space.suggest(trial), base)


def base_config(space: SearchSpace, data: Mapping[str, Any]) -> AskedConfig:
    """The config knobs outside `space` keep, from its dict (the sampler process gets it so)."""
    return InferenceConfig.from_dict(dict(data)) if is_inference(space) else TrialConfig.from_dict(dict(data))


__all__ = ["AskedConfig", "base_config", "suggest_config"]
