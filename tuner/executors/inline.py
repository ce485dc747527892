"""`InlineExecutor`: trials run in threads of the calling process, with no isolation.

For debugging (a breakpoint in a workload is hit in the same process) and as a
benchmark peer of `LocalExecutor`. A segfault or `os._exit` in a trial ends the whole
process here — use `LocalExecutor` for real studies.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from tuner.executors.base import Executor
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialResult

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

    @property
    def max_concurrency(self) -> int:
        return self._workers

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        return self._pool.submit(self._run, request, on_report)

    def _run(self, request: TrialRequest, on_report: ReportCallback | None) -> TrialResult:
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
