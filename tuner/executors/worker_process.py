"""The body of one persistent local worker process (see `tuner.executors.local`).

Runs in a fresh interpreter started with the `spawn` method and serves trials over its
end of a `multiprocessing` Pipe until told to stop or its parent disappears:

    parent -> worker   ("run", TrialRequest.to_dict()) | ("stop",) | ("prune", bool)
    worker -> parent   ("ready", pid, holds_cuda_context) once, then per trial any number of
                       ("report", step, value) — each answered by ("prune", bool) —
                       and finally ("result", TrialResult.to_dict(), retiring: bool,
                       holds_cuda_context: bool)

`retiring` is True after a sticky CUDA error (`tuner.trial.cuda_errors`): the worker
exits after sending the result and the parent starts a fresh one, since every later
trial in this process's broken CUDA context would fail too. `holds_cuda_context` says
whether the worker has initialised CUDA: before a multi-process trial the parent replaces
a worker that has, rather than leave its context on the GPU where rank 0 trains
(`tuner.executors.cuda_context`).

Workload instances are cached per name, so `import torch` and any workload set-up (data
loading, tokenizer…) happen once per worker, not once per trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import os
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from tuner.executors.cuda_context import cuda_context_held
from tuner.trial.cuda_errors import is_sticky_cuda_error

if TYPE_CHECKING:
    from tuner.executors.worker_env import WorkerEnvironment

#: Seconds between checks that the parent still exists (no orphans if it is SIGKILLed).
PARENT_WATCH_INTERVAL_S = 0.5


class PipeReporter:
    """Forwards intermediate values to the parent and waits for its prune decision."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, step: int, value: float) -> bool:
        self._conn.send(("report", int(step), float(value)))
        reply = self._conn.recv()
        return bool(reply[1]) if reply and reply[0] == "prune" else False


def _watch_parent(parent_pid: int) -> None:
    # When the parent dies we are re-parented (getppid changes); exit at once instead of
    # training on as an orphan holding a GPU.
    while True:
        time.sleep(PARENT_WATCH_INTERVAL_S)
        if os.getppid() != parent_pid:
            os._exit(3)


def _register_workloads(paths: dict[str, str]) -> dict[str, str]:
    """Re-register workloads that the parent registered in its own process (Python API,
    tests). Paths are name -> "module:qualname" strings taken from the parent's registry,
    never from user input.

    Returns name -> why for the workloads that could not be imported here. One broken
    registration must not keep the worker from serving every other workload's trials
    (a server runs many studies through one executor): it fails only the trials that ask
    for it, and the worker start only when it is one the worker must preload.
    """
    from tuner.workloads import register_workload

    unavailable: dict[str, str] = {}
    for name, path in paths.items():
        module_name, qualname = path.split(":", 1)
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            register_workload(obj)
        except Exception as exc:
            unavailable[name] = f"the worker could not start workload {name!r} ({path}): {_start_failure(exc)}"
    return unavailable


class UnavailableWorkloadError(RuntimeError):
    """A workload registered in the parent that this worker process could not import."""


def _failure_reason(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"trial raised {type(exc).__name__}: {exc}{where}"


def _start_failure(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _preload_runner(workload: Any) -> None:
    """Import the trial runner (and with it torch) before the first trial is asked for,
    while the study process is still setting up."""
    from tuner.workloads.base import TrainableWorkload

    if isinstance(workload, TrainableWorkload):
        importlib.import_module("tuner.trial.runner")


def _freeze_heap() -> None:
    # torch creates hundreds of thousands of long-lived objects. Moving them to the
    # permanent generation makes each trial's gc.collect() (the runner frees memory
    # between trials) scan only that trial's objects: ~0.5 s -> milliseconds per trial.
    gc.collect()
    gc.freeze()


def worker_main(
    conn: Connection,
    parent_pid: int,
    env: WorkerEnvironment,
    registered_workloads: dict[str, str],
    preload_workloads: list[str],
) -> None:
    """Entry point of a worker process."""
    # Own process group: the parent can kill the worker together with any processes a
    # trial started (world_size > 1 ranks), and a terminal Ctrl-C reaches only the parent,
    # which then shuts workers down in order.
    with contextlib.suppress(OSError):
        os.setpgrp()
    # Before torch loads: CUDA reads these once, at initialisation.
    os.environ.update(env.set)
    for name in env.unset:
        os.environ.pop(name, None)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()

    try:
        from tuner.trial_request import TrialRequest
        from tuner.types import TrialResult, TrialStatus
        from tuner.workloads import get_workload

        unavailable = _register_workloads(registered_workloads)
        workloads: dict[str, Any] = {}
        for name in preload_workloads:
            if name in unavailable:  # the study's own workload: nothing this worker can run
                raise UnavailableWorkloadError(unavailable[name])
            workloads[name] = get_workload(name)
            _preload_runner(workloads[name])
    except BaseException as exc:
        # Tell the parent why before dying: otherwise all it sees is an exit code, and
        # every trial of the study fails with "exited with code 1" and no cause.
        with contextlib.suppress(Exception):
            conn.send(("start_failed", _start_failure(exc)))
        raise
    _freeze_heap()
    conn.send(("ready", os.getpid(), cuda_context_held()))
    reporter = PipeReporter(conn)
    trials_served = 0

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent closed its end
        if message[0] == "stop":
            return
        if message[0] != "run":
            continue
        started = time.perf_counter()
        try:
            request = TrialRequest.from_dict(message[1])
            workload = workloads.get(request.workload)
            if request.workload in unavailable:
                # infrastructure: the trial never ran, the study's stop-after-N rule counts it
                result = TrialResult.failed(unavailable[request.workload], duration_s=0.0, infrastructure=True)
            else:
                if workload is None:
                    workload = workloads[request.workload] = get_workload(request.workload)
                result = workload.run_trial(request, reporter)
            if not isinstance(result, TrialResult):
                result = TrialResult.failed(
                    f"workload {request.workload!r} returned {type(result).__name__}, not a TrialResult"
                )
        except Exception as exc:  # a workload bug is a failed trial, not a dead worker
            result = TrialResult.failed(_failure_reason(exc), duration_s=time.perf_counter() - started)
        # Whether the exception was raised here or turned into a failed result by the
        # runner's guard, its message is in the reason.
        retiring = result.status == TrialStatus.FAILED and is_sticky_cuda_error(result.reason or "")
        notes = list(env.notes)
        if retiring:
            notes.append(
                "a CUDA error that breaks the process's CUDA context: this worker exited after the "
                "trial and a fresh one runs the next trial"
            )
        if notes:
            result = dataclasses.replace(result, notes=(*result.notes, *notes))
        payload = result.to_dict()
        if payload.get("duration_s") is None:
            payload["duration_s"] = time.perf_counter() - started
        try:
            conn.send(("result", payload, retiring, cuda_context_held()))
        except (BrokenPipeError, OSError):
            return
        if retiring:
            return
        trials_served += 1
        if trials_served == 1:
            _freeze_heap()  # what the first trial imported lazily (torch submodules…)
