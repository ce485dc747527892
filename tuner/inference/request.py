"""`InferenceRequest`: one serving trial as plain data (workload by registry name, knobs,
SLO, and how long the rate ramp may measure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import ConfigError, FieldProblem
from tuner.inference.config import InferenceConfig


@dataclass(frozen=True)
class RampBudget:
    """How the highest sustainable rate is searched: rate steps of about `step_s` of
    arrivals each (at least `min_requests`, at most `max_requests`: high enough that a step
    at ~600k QPS still lasts `step_s`, as a shorter one hides a growing queue), up to
    `max_steps` steps; the first `warm_share` of each step's requests are not counted (the
    queue fills from empty)."""

    step_s: float = 0.6
    max_steps: int = 6
    min_requests: int = 150
    max_requests: int = 400_000
    warm_share: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if not self.step_s > 0:
            problems.append(FieldProblem("ramp.step_s", self.step_s, "must be > 0", "e.g. 0.6"))
        if self.max_steps < 1:
            problems.append(FieldProblem("ramp.max_steps", self.max_steps, "must be >= 1", "e.g. 6"))
        if not 1 <= self.min_requests <= self.max_requests:
            problems.append(
                FieldProblem(
                    "ramp.min_requests", self.min_requests, "must be in [1, max_requests]", "e.g. 150"
                )
            )
        if not 0 <= self.warm_share < 0.9:
            problems.append(
                FieldProblem("ramp.warm_share", self.warm_share, "must be in [0, 0.9)", "e.g. 0.1")
            )
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class InferenceRequest:
    workload: str
    params: dict[str, Any]  # resolved workload params
    config: InferenceConfig
    slo_p99_ms: float = 50.0
    target_qps: float | None = None  # measure p99 at this fixed rate too (objective p99_at_qps)
    seed: int = 0
    device: str = "cpu"
    ramp: RampBudget = field(default_factory=RampBudget)
    memory_limit_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_dict()
        return data
