"""`InferenceConfig`: every knob one serving trial applies; the defaults are the untuned
server a user starts from (fp32, batch 1, eager, no batching window, one instance)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tuner.errors import ConfigError, FieldProblem
from tuner.inference.knobs import INFERENCE_KNOBS, closest_inference_knob
from tuner.knobs import coerce_and_check_fields


@dataclass(frozen=True)
class InferenceConfig:
    max_batch_size: int = 1
    batch_window_ms: float = 0.0
    padding: str = "longest"
    instances: int = 1
    threads_per_instance: int = 0
    serving_precision: str = "fp32"
    int8_backend: str = "torchao"
    fusion: bool = False
    compile_mode: str = "off"

    def __post_init__(self) -> None:
        problems = coerce_and_check_fields(self, INFERENCE_KNOBS)
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> InferenceConfig:
        problems = []
        for key in data:
            if key not in INFERENCE_KNOBS:
                guess = closest_inference_knob(str(key))
                fix = f"did you mean {guess!r}?" if guess else "use one of: " + ", ".join(INFERENCE_KNOBS)
                problems.append(FieldProblem(str(key), data[key], "is not an inference knob", fix, source))
        if problems:
            raise ConfigError(problems)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError([dataclasses.replace(p, source=source) for p in exc.problems]) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> InferenceConfig:
        return dataclasses.replace(self, **changes)

    @property
    def int8(self) -> bool:
        return self.serving_precision.startswith("int8")


def stored_config(data: dict[str, Any]) -> Any:
    """A trial's config from its stored or answered dict: an `InferenceConfig` when it is a
    serving one (it has `serving_precision`: a `kind: inference` space's trial), else a
    training `TrialConfig`."""
    if "serving_precision" in data:
        return InferenceConfig.from_dict(data)
    from tuner.types import TrialConfig

    return TrialConfig.from_dict(data)
