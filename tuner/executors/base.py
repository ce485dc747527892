"""The executor contract: where trials run (local worker processes, a Ray cluster…).

An executor is handed `TrialRequest`s and hands back `TrialResult`s through futures. It
never decides anything about the search (that is the study loop's job) and never raises
for a trial's own failure: a crashed, killed or hung trial resolves its future with a
`failed` result whose `reason` says what happened.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tuner.types import TrialBudget, TrialConfig, TrialResult

#: Called with (step, value) for each intermediate value; returns True to prune the trial.
ReportCallback = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialRequest:
    """Everything a worker needs to run one trial; plain data so it crosses processes."""

    trial_number: int
    workload: str  # a registry name, never an import path
    params: dict[str, Any]
    config: TrialConfig
    budget: TrialBudget
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_dict()
        data["budget"] = self.budget.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRequest:
        data = dict(data)
        data["config"] = TrialConfig.from_dict(data["config"])
        data["budget"] = TrialBudget.from_dict(data["budget"])
        return cls(**data)


class Executor(ABC):
    """Runs trials concurrently, up to `max_concurrency` at a time."""

    @property
    @abstractmethod
    def max_concurrency(self) -> int:
        """How many trials may run at once."""

    @abstractmethod
    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        """Start `request`; the future resolves with its result (never with an exception)."""

    def close(self) -> None:
        """Stop workers and release resources. Idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
