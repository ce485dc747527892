"""Workloads that Ray worker processes import by module name in tests/test_ray_executor.py.

They run in a Ray worker, not in the test process, so they are registered at import time
and reached through `RayExecutor(worker_imports=["ray_test_workloads"])`.
"""

from __future__ import annotations

import os
import time

from tuner.types import TrialResult, TrialStatus
from tuner.workloads import Reporter, TrialRequest, Workload, WorkloadParam, register_workload


@register_workload
class CountdownWorkload(Workload):
    """Reports a loss that falls by `drop` each step; stops when the reporter says prune."""

    name = "raytest_countdown"
    params = (
        WorkloadParam("start", "float", 10.0, "the loss at step 0"),
        WorkloadParam("drop", "float", 1.0, "how much the loss falls per step"),
        WorkloadParam("step_s", "float", 0.0, "seconds each step sleeps", low=0.0),
    )

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        config, params, budget = request.config, request.params, request.budget
        losses: list[float] = []
        for step in range(budget.max_steps):
            time.sleep(params["step_s"])
            loss = params["start"] - params["drop"] * step
            losses.append(loss)
            if reporter.report(step, loss):
                return TrialResult(
                    status=TrialStatus.PRUNED,
                    steps_run=step + 1,
                    loss_curve=tuple(losses),
                    reason=f"pruned at step {step}",
                    metrics={"pid": float(os.getpid())},
                )
        return TrialResult(
            status=TrialStatus.OK,
            items_per_s=float(config.micro_batch_size),
            steps_run=budget.max_steps,
            loss_curve=tuple(losses),
            val_loss=losses[-1],
            metrics={"pid": float(os.getpid())},
        )


@register_workload
class ExitWorkload(Workload):
    """Ends its worker process with `os._exit`, as a segfault or a CUDA abort would."""

    name = "raytest_exit"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        os._exit(17)


@register_workload
class RaisingWorkload(Workload):
    """Breaks the workload contract by raising instead of returning a result."""

    name = "raytest_raise"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        raise ArithmeticError("the model diverged in a way nobody caught")


@register_workload
class StickyCudaFailureWorkload(Workload):
    """Ends like a trial whose CUDA context broke (an illegal address), on the CPU: the
    executor classifies the failure by its reason, as it would a real one on a GPU."""

    name = "raytest_sticky_cuda"
    params = (WorkloadParam("raise_it", "bool", False, "raise the CUDA error instead of returning it"),)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        message = "CUDA error: an illegal memory access was encountered"
        if request.params["raise_it"]:
            raise RuntimeError(f"{message} (pid {os.getpid()})")
        return TrialResult.failed(f"RuntimeError: {message}", metrics={"pid": float(os.getpid())})


@register_workload
class DeviceEchoWorkload(Workload):
    """Says which device it was asked for and which GPUs its process sees."""

    name = "raytest_device_echo"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        return TrialResult(
            status=TrialStatus.OK,
            items_per_s=1.0,
            steps_run=1,
            metrics={"pid": float(os.getpid())},
            notes=(f"device={request.device}", f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"),
        )
