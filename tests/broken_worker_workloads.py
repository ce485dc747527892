"""A workload whose module cannot be imported inside a worker process, on demand.

The parent registers it (importing it works there); each worker re-imports the module
at start-up (`_register_workloads`). With TUNER_TEST_BREAK_WORKER set in the environment
the workers inherit, that import raises, as a dependency missing on the worker side would.
"""

from __future__ import annotations

import multiprocessing
import os

from tuner.types import TrialResult, TrialStatus
from tuner.workloads import Reporter, TrialRequest, Workload, WorkloadParam, register_workload

BREAK_VAR = "TUNER_TEST_BREAK_WORKER"

if multiprocessing.parent_process() is not None and os.environ.get(BREAK_VAR):
    raise ImportError(f"simulated: a dependency missing in the worker ({BREAK_VAR} is set)")


@register_workload
class Steady(Workload):
    """Measures its batch size as its throughput, or raises when asked (the user's bug)."""

    name = "steady"
    params = (WorkloadParam("raise", "bool", False, "raise in every trial"),)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        if request.params.get("raise"):
            raise RuntimeError("the user's own bug")
        return TrialResult(status=TrialStatus.OK, items_per_s=float(request.config.micro_batch_size), steps_run=1)
