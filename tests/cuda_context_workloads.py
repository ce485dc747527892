"""The workload of tests/test_cuda_context.py, in a module of its own: local workers import
the modules of registered workloads, and this one imports no torch unless a trial asks."""

from __future__ import annotations

import os

from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialResult, TrialStatus
from tuner.workloads import Workload, WorkloadParam, register_workload


@register_workload
class ContextProbe(Workload):
    """Returns its process's PID; can claim a CUDA context or fail with a given reason.

    A CPU has no CUDA context to hold: `claim_cuda_context` stands in for a single-GPU
    trial by making `torch.cuda.is_initialized()` true in its own (worker) process, which
    is what the worker reports to its parent after a real CUDA trial."""

    name = "cuda-context-probe"
    item_unit = "items"
    params = (
        WorkloadParam("claim_cuda_context", "bool", False, "act as a trial that initialised CUDA"),
        WorkloadParam("fail_reason", "str", "", "return a failed result with this reason"),
    )

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        if request.params["claim_cuda_context"]:
            import torch

            torch.cuda.is_initialized = lambda: True  # this worker process only
        if request.params["fail_reason"]:
            return TrialResult.failed(request.params["fail_reason"])
        return TrialResult(
            status=TrialStatus.OK, items_per_s=1.0, steps_run=1, metrics={"pid": float(os.getpid())}
        )
