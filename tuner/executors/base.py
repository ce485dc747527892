"""The executor contract: where trials run (local worker processes, a Ray cluster…).

An executor is handed `TrialRequest`s and hands back `TrialResult`s through futures. It
never decides anything about the search (that is the study loop's job) and never raises
for a trial's own failure: a crashed, killed or hung trial resolves its future with a
`failed` result whose `reason` says what happened.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.types import TrialBudget, TrialConfig, TrialResult

if TYPE_CHECKING:
    from tuner.workloads.base import Reporter, Workload

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
    #: one device's peak FLOP/s for the config's precision (the study loop reads it from
    #: the hardware profile); the runner reports MFU with it. None: no MFU.
    peak_flops: float | None = None

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


def run_requested_trial(workload: Workload, request: TrialRequest, reporter: Reporter) -> TrialResult:
    """`workload.run_trial` for `request`, as every executor calls it.

    `peak_flops` is passed only when set and only to a `run_trial` that takes it: a user's
    workload written before the keyword existed keeps working (it just reports no MFU).
    """
    kwargs: dict[str, Any] = {"device": request.device, "seed": request.seed}
    if request.peak_flops is not None and _accepts_peak_flops(type(workload)):
        kwargs["peak_flops"] = request.peak_flops
    return workload.run_trial(request.config, request.params, request.budget, reporter, **kwargs)


@functools.cache
def _accepts_peak_flops(workload_class: type) -> bool:
    try:
        parameters = inspect.signature(workload_class.run_trial).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "peak_flops" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


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
