"""`LocalExecutor`: trials in persistent, isolated worker processes on this machine.

Why processes: a trial may segfault, call `os._exit`, hit a CUDA error or leak GPU
memory; none of that may take the study down. Why persistent: a fresh Python process
with torch costs seconds before the first step (3-4 s on an H200 machine), so each
worker is started once and serves trial after trial; the per-trial cost is one pipe
round trip (well under a millisecond).

Each worker slot has a dispatcher thread in the parent. It sends the trial, relays
intermediate reports to the `on_report` callback and its prune decision back, and waits
on both the pipe and the process sentinel, so a dead worker is noticed at once: its
trial resolves as `failed` with the reason, and a fresh worker replaces it for the next
trial. A trial running past its timeout has its worker (and everything the worker
started) killed, and resolves as `failed` with "timed out".
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import wait

from tuner.errors import FieldProblem, ValidationError
from tuner.executors.base import Executor
from tuner.executors.cuda_context import fresh_worker_reason
from tuner.executors.worker_env import (
    WorkerEnvironment,
    assign_gpus,
    gpu_sharing_warning,
    trial_device_in_worker,
    worker_environment,
)
from tuner.executors.worker_process import worker_main
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialBudget, TrialResult

log = logging.getLogger(__name__)

#: Timeout of a trial whose budget is counted in steps only (no max_seconds).
DEFAULT_STEP_BUDGET_TIMEOUT_S = 1800.0
#: Seconds a worker gets to start (spawn + imports) before it counts as dead.
WORKER_START_TIMEOUT_S = 120.0
#: Seconds `close()` waits for a worker to stop by itself before killing it.
STOP_GRACE_S = 2.0

_live_executors: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()


def budget_timeout_s(budget: TrialBudget) -> float:
    """A generous per-trial timeout derived from the budget: timed seconds plus room for
    warm-up, compile and evaluation."""
    if budget.max_seconds is not None:
        return 120.0 + 4.0 * budget.max_seconds
    return DEFAULT_STEP_BUDGET_TIMEOUT_S


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker process died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process died (signal {name})"
    return f"worker process exited with code {exitcode}"


def _visible_gpu_ids() -> list[str]:
    """GPU ids this process may use, without importing torch (NVML is cheap)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    from tuner.hardware.probe import NvmlUnavailableError, nvml_session

    try:
        with nvml_session() as nvml:
            try:
                return [str(i) for i in range(nvml.nvmlDeviceGetCount())]
            except nvml.NVMLError:  # the driver refused the count: use no GPU
                return []
    except NvmlUnavailableError:  # no driver, no library: a CPU machine
        return []


def _registered_workload_paths() -> dict[str, str]:
    # Workloads registered by Python code in this process (not entry points or built-ins)
    # must be registered in each worker too; they travel as name -> "module:qualname".
    from tuner.workloads import registered_workloads

    return {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in registered_workloads().items()}


@dataclass
class _Job:
    request: TrialRequest
    on_report: ReportCallback | None
    future: Future[TrialResult]


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, slot: int, env: WorkerEnvironment, preload: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # Not a daemon: daemonic processes may not start children, and multi-rank trials do.
        self.process = ctx.Process(
            target=worker_main,
            args=(child_conn, os.getpid(), env, _registered_workload_paths(), preload),
            name=f"tuner-worker-{slot}",
            daemon=False,
        )
        self.process.start()
        child_conn.close()  # so EOF on our end means the worker is gone
        self.ready = False
        self.trials_run = 0
        #: whether the worker has initialised CUDA (it says so when ready and with each result)
        self.holds_cuda_context = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout_s: float) -> str | None:
        """Wait for the worker's hello; return why it failed to start, or None."""
        if self.ready:
            return None
        ready = wait([self.conn, self.process.sentinel], timeout=timeout_s)
        if self.conn in ready:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = None
            if message and message[0] == "ready":
                self.ready = True
                self.holds_cuda_context = len(message) > 2 and bool(message[2])
                return None
            if message and message[0] == "start_failed":
                self.process.join(timeout=5.0)
                return f"worker process could not start: {message[1]}"
        if not ready:
            return f"worker process did not start within {timeout_s:.0f} s"
        self.process.join(timeout=1.0)
        return _exit_description(self.process.exitcode) + " while starting"

    def kill(self) -> None:
        """Kill the worker and every process it started (its own process group)."""
        pid = self.process.pid
        if pid is not None and self.process.is_alive():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(timeout=STOP_GRACE_S)
        if self.process.is_alive():
            self.kill()
        else:
            # The worker may have left trial processes behind in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.conn.close()


class LocalExecutor(Executor):
    """Runs trials in `workers` persistent worker processes (spawned once, reused).

    - `device`: "auto" (GPUs if present, else CPU), "cpu", "cuda" or "cuda:N"; on a GPU
      machine each worker gets its own share of the GPUs via CUDA_VISIBLE_DEVICES
      ("cuda:N" is this process's N-th visible GPU; the worker sees only that one and
      its trials run on cuda:0). More workers than GPUs share GPUs: see `warnings`.
    - `trial_timeout_s`: kill a trial's worker after this many seconds; default derived
      from each trial's budget (`budget_timeout_s`).
    - `preload_workloads`: workload names each worker instantiates at start-up, so the
      first trial does not pay for it.
    """

    def __init__(
        self,
        workers: int = 1,
        device: str = "auto",
        trial_timeout_s: float | None = None,
        *,
        preload_workloads: tuple[str, ...] = (),
    ) -> None:
        problems = []
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            problems.append(FieldProblem("workers", workers, "must be an integer >= 1", "e.g. --workers 2"))
        if trial_timeout_s is not None and trial_timeout_s <= 0:
            problems.append(
                FieldProblem(
                    "trial_timeout_s", trial_timeout_s, "must be > 0 seconds", "omit it or give seconds"
                )
            )
        if problems:
            raise ValidationError(problems)
        self._workers_n = workers
        self._device = device
        self._trial_timeout_s = trial_timeout_s
        self._preload = list(preload_workloads)
        gpu_ids = _visible_gpu_ids() if device != "cpu" else []
        self._gpu_groups = assign_gpus(workers, device, gpu_ids)
        self._envs = [worker_environment(os.environ, group) for group in self._gpu_groups]
        # What each worker's trials ask for: "cuda:N" is "cuda:0" behind the worker's
        # CUDA_VISIBLE_DEVICES (every slot gets the same group for an explicit cuda:N).
        self._trial_devices = [trial_device_in_worker(device, group) for group in self._gpu_groups]
        #: set-up problems that do not stop the executor (GPUs shared by workers)
        self.warnings: list[str] = []
        sharing = gpu_sharing_warning(workers, device, gpu_ids)
        if sharing is not None:
            log.warning("local executor: %s", sharing)
            self.warnings.append(sharing)
            # ... and on every trial it concerns: its throughput and peak are a shared GPU's.
            self._envs = [dataclasses.replace(env, notes=(*env.notes, sharing)) for env in self._envs]
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots: list[_Worker | None] = [None] * workers
        self.replaced_workers = 0  # how many dead workers were replaced (for reports/tests)
        # Start the processes now: their interpreter start-up overlaps the caller's set-up.
        for slot in range(workers):
            self._slots[slot] = self._spawn(slot)
        self._threads = [
            threading.Thread(target=self._dispatch, args=(slot,), name=f"tuner-dispatch-{slot}", daemon=True)
            for slot in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        _live_executors.add(self)

    @property
    def max_concurrency(self) -> int:
        return self._workers_n

    def worker_pids(self) -> list[int | None]:
        """PIDs of the current worker processes (a replaced worker has a new PID)."""
        with self._lock:
            return [w.pid if w is not None else None for w in self._slots]

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        future: Future[TrialResult] = Future()
        if self._closed:
            future.set_result(TrialResult.failed("executor is closed"))
            return future
        self._jobs.put(_Job(request, on_report, future))
        return future

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Fail trials that never started, then wake every dispatcher with a sentinel.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_result(TrialResult.failed("executor closed before the trial started"))
        for _ in self._threads:
            self._jobs.put(None)
        with self._lock:
            workers = [w for w in self._slots if w is not None]
            self._slots = [None] * self._workers_n
        for worker in workers:
            worker.stop()
        for thread in self._threads:
            thread.join(timeout=STOP_GRACE_S + 5.0)

    # -- dispatcher side ---------------------------------------------------------------

    def _spawn(self, slot: int) -> _Worker:
        return _Worker(slot, self._envs[slot], self._preload)

    def _worker_for(self, slot: int) -> _Worker | None:
        with self._lock:
            if self._closed:
                return None
            worker = self._slots[slot]
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    worker.kill()
                    self.replaced_workers += 1
                worker = self._slots[slot] = self._spawn(slot)
            return worker

    def _replace(self, slot: int, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if self._closed or self._slots[slot] is not worker:
                return
            self.replaced_workers += 1
            self._slots[slot] = self._spawn(slot)

    def _dispatch(self, slot: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = self._run(slot, job)
            except Exception as exc:  # never leave a future unresolved
                log.exception("local executor: dispatcher error")
                # e.g. a worker that cannot even be spawned (a bad interpreter path)
                result = TrialResult.failed(f"executor error: {type(exc).__name__}: {exc}", infrastructure=True)
            job.future.set_result(result)

    def _run(self, slot: int, job: _Job) -> TrialResult:
        request = job.request
        if request.device != self._trial_devices[slot] and request.device == self._device:
            request = dataclasses.replace(request, device=self._trial_devices[slot])
        worker = self._worker_for(slot)
        if worker is None:
            return TrialResult.failed("executor closed before the trial started")
        trial = f"trial {request.trial_number}"
        why = worker.wait_ready(WORKER_START_TIMEOUT_S)
        if why is not None:
            self._replace(slot, worker)
            # the trial never ran: not its failure, and the study loop counts these apart
            return TrialResult.failed(f"{why} (before {trial})", infrastructure=True)
        fresh_note = fresh_worker_reason(request.device, request.config.world_size, worker.holds_cuda_context)
        if fresh_note is not None:
            # The CUDA context cannot be released in the worker: only its exit frees it.
            self._replace(slot, worker)
            worker = self._worker_for(slot)
            if worker is None:
                return TrialResult.failed("executor closed before the trial started")
            why = worker.wait_ready(WORKER_START_TIMEOUT_S)
            if why is not None:
                self._replace(slot, worker)
                return TrialResult.failed(f"{why} (before {trial})", infrastructure=True)
        timeout_s = self._trial_timeout_s or budget_timeout_s(request.budget)
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            worker.conn.send(("run", request.to_dict()))
        except (OSError, ValueError):
            return self._died(slot, worker, trial, started)
        while True:
            remaining = deadline - time.monotonic()
            ready = wait([worker.conn, worker.process.sentinel], timeout=max(0.0, remaining))
            if not ready:
                self._replace(slot, worker)
                return TrialResult.failed(
                    f"timed out after {timeout_s:g} s during {trial}; its worker was killed and replaced",
                    duration_s=time.monotonic() - started,
                )
            # Prefer the pipe: a worker may send its result and then die; the result counts.
            if not worker.conn.poll():
                return self._died(slot, worker, trial, started)
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                return self._died(slot, worker, trial, started)
            kind = message[0]
            if kind == "report":
                prune = self._decide(job.on_report, message[1], message[2])
                try:
                    worker.conn.send(("prune", prune))
                except (OSError, ValueError):
                    return self._died(slot, worker, trial, started)
            elif kind == "result":
                worker.trials_run += 1
                worker.holds_cuda_context = len(message) > 3 and bool(message[3])
                result = TrialResult.from_dict(message[1])
                if fresh_note is not None:
                    result = dataclasses.replace(result, notes=(*result.notes, fresh_note))
                if len(message) > 2 and message[2]:
                    # The worker retires after a sticky CUDA error (its context is broken and
                    # every later trial would fail): start a fresh one for the next trial.
                    worker.process.join(timeout=STOP_GRACE_S)
                    self._replace(slot, worker)
                return result

    @staticmethod
    def _decide(on_report: ReportCallback | None, step: int, value: float) -> bool:
        if on_report is None:
            return False
        try:
            return bool(on_report(step, value))
        except Exception:  # a storage hiccup must not kill the trial; just don't prune
            log.exception("on_report callback failed at step %s", step)
            return False

    def _died(self, slot: int, worker: _Worker, trial: str, started: float) -> TrialResult:
        worker.process.join(timeout=2.0)
        closing = self._closed
        reason = (
            f"executor closed while {trial} ran"
            if closing
            else f"{_exit_description(worker.process.exitcode)} during {trial}"
        )
        self._replace(slot, worker)
        return TrialResult.failed(reason, duration_s=time.monotonic() - started)


@atexit.register
def _close_live_executors() -> None:
    # Last line of defence against orphaned workers when a caller forgets close().
    for executor in list(_live_executors):
        with contextlib.suppress(Exception):
            executor.close()
