"""`TrialRequest` and `Reporter`: what carries one trial from the study loop to a workload.

Core types, like `tuner.types`: the study loop builds a request, an executor ships it
(as `to_dict` data across processes), and `Workload.run_trial(request, reporter)` runs
it. Workloads, the trial runner, executors and the study loop all import this module
and none of them imports another for these types, so they stay free of import cycles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tuner.types import TrialBudget, TrialConfig

__all__ = ["NullReporter", "ReportCallback", "Reporter", "TrialRequest"]

#: Called with (step, value) for each intermediate value; returns True to prune the trial.
ReportCallback = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialRequest:
    """Everything a worker needs to run one trial; plain data so it crosses processes.

    `params` are the workload's *resolved* parameters (defaults filled, validated when
    the study's spec was created), so no one downstream resolves them again.
    """

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
    #: the hardware profile's (probed) memory bandwidth of one GPU, bytes/s: NVML telemetry
    #: states the trial's memory bandwidth as a share of it. None: of the theoretical peak.
    peak_memory_bandwidth: float | None = None

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


class Reporter(Protocol):
    """Receives intermediate values of a running trial.

    `report` returns True when the trial should stop now (the pruner's decision); the
    runner then ends the trial with status `pruned`.
    """

    def report(self, step: int, value: float) -> bool: ...


class NullReporter:
    """A reporter that never prunes (standalone runs, baselines)."""

    def report(self, step: int, value: float) -> bool:
        return False
