"""`InlineExecutor`: trials run in threads of the calling process, with no isolation.

For debugging (a breakpoint in a workload is hit in the same process) and as a
benchmark peer of `LocalExecutor`. A segfault or `os._exit` in a trial ends the whole
process here — use `LocalExecutor` for real studies.

A sticky CUDA error (`tuner.trial.cuda_errors`: illegal address, device-side assert,
NCCL failure) breaks this process's CUDA context for good, and this executor cannot
replace its process as the local and Ray executors replace their workers: every later
trial on the GPU would fail and be stored as a bad config. So after one, trials that may
use the GPU are refused (failed, `infrastructure`: they never ran, and the study stops
after a few) with the reason; CPU trials still run. `cuda:N` needs no remapping here: the
trial runs in this process, whose N-th visible GPU is what `cuda:N` means. A
multi-process trial launched from a process that holds a CUDA context (an earlier GPU
trial here) trains rank 0 next to that context; its result says so.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from tuner.executors.base import Executor
from tuner.executors.cuda_context import cuda_context_held, fresh_worker_reason
from tuner.trial.cuda_errors import is_sticky_cuda_error
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialResult, TrialStatus

if TYPE_CHECKING:
    from tuner.workloads.base import Workload


class _CallbackReporter:
    def __init__(self, on_report: ReportCallback | None) -> None:
        self._on_report = on_report

    def report(self, step: int, value: float) -> bool:
        return bool(self._on_report(step, value)) if self._on_report is not None else False


class InlineExecutor(Executor):
    """Runs up to `workers` trials at once in this process's threads."""

    def __init__(self, workers: int = 1) -> None:
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuner-inline")
        self._workloads: dict[str, Workload] = {}
        self._lock = threading.Lock()
        #: the failure reason of the trial whose sticky CUDA error broke this process's context
        self.cuda_broken_by: str | None = None

    @property
    def max_concurrency(self) -> int:
        return self._workers

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        return self._pool.submit(self._run, request, on_report)

    def _run(self, request: TrialRequest, on_report: ReportCallback | None) -> TrialResult:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        shares_gpu0 = fresh_worker_reason(request.device, request.config.world_size, cuda_context_held())
        result = self._run_workload(request, on_report)
        if shares_gpu0 is not None:
            note = (
                "this process held a CUDA context from an earlier GPU trial while rank 0 trained on the "
                "first visible GPU: rank 0 had less memory and NVML counted that context; the local "
                "executor launches such trials from a fresh worker"
            )
            result = dataclasses.replace(result, notes=(*result.notes, note))
        if (
            request.device != "cpu"
            and result.status is TrialStatus.FAILED
            and is_sticky_cuda_error(result.reason or "")
        ):
            with self._lock:
                if self.cuda_broken_by is None:
                    self.cuda_broken_by = result.reason
            note = (
                "a CUDA error that breaks the process's CUDA context: the inline executor runs no "
                "further GPU trials in this process (use the local executor, which replaces its worker)"
            )
            result = dataclasses.replace(result, notes=(*result.notes, note))
        return result

    def _refusal(self, request: TrialRequest) -> TrialResult | None:
        """A failed, never-run result for a GPU trial after a sticky CUDA error, else None."""
        with self._lock:
            broken_by = self.cuda_broken_by
        if broken_by is None or request.device == "cpu":
            return None
        return TrialResult.failed(
            f"not run: an earlier trial broke this process's CUDA context ({broken_by[:200]}) and the "
            "inline executor cannot replace its process; run the study with the local executor "
            "(a fresh worker follows such an error) or start a new process",
            infrastructure=True,
        )

    def _run_workload(self, request: TrialRequest, on_report: ReportCallback | None) -> TrialResult:
        from tuner.workloads import get_workload

        started = time.perf_counter()
        try:
            workload = self._workloads.get(request.workload)
            if workload is None:
                workload = self._workloads[request.workload] = get_workload(request.workload)
            return workload.run_trial(request, _CallbackReporter(on_report))
        except Exception as exc:
            return TrialResult.failed(
                f"trial raised {type(exc).__name__}: {exc}", duration_s=time.perf_counter() - started
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
