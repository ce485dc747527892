"""`RayExecutor`: run each trial as a Ray task on a local or remote Ray cluster.

How a trial travels:

1. `submit` turns the `TrialRequest` into plain data and launches one Ray task with the
   resources the trial needs (`resources_per_trial` x `world_size`: one share per rank).
   Ray keeps worker processes alive between tasks, so `import torch` and workload set-up
   are paid once per worker process, not per trial (Ray's default for GPU tasks is a fresh
   process per task, which frees leaked GPU memory; `max_calls_per_worker` overrides it).
2. Inside the task the workload is resolved by registry name (never an import path) and
   `run_trial` runs with a reporter that sends each intermediate value to a small async
   Ray actor, the *report broker*, and waits for the answer.
3. A driver thread long-polls the broker, calls the study's `on_report(step, value)` (the
   pruner's decision is made in the study's process, as with the local executor) and sends
   the decision back, so a pruned trial stops at the same step it would stop locally.
4. The task's return value resolves the future. A task that never returns (worker crash,
   `os._exit`, SIGKILL, killed by Ray's memory monitor) resolves as `failed` with Ray's
   reason; Ray never retries a trial (`max_retries=0`), because a rerun would measure the
   same config twice and hide the failure.
5. A trial that ends with a sticky CUDA error (`tuner.trial.cuda_errors`: illegal address,
   device-side assert, NCCL failure) leaves its worker's CUDA context broken, so every
   later task in that process would fail. The task hands its result to the broker (an
   actor of the driver, which outlives the worker), then raises SystemExit: Ray ends the
   worker and starts a fresh one for later tasks, and the driver takes the result from
   the broker instead of Ray's "worker died" error. A study's `cuda:N` is remapped to the
   GPU Ray assigned to the task (`tuner.executors.ray_device`).

Ray is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.executors.base import Executor
from tuner.executors.ray_cluster import RayConnection, cluster_resources, connect_ray, disconnect_ray
from tuner.executors.ray_device import ray_trial_device
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialResult

log = logging.getLogger(__name__)

#: Resource names a trial can ask for; anything else is passed to Ray as a custom resource.
_STANDARD_RESOURCES = ("cpu", "gpu", "memory")
#: Seconds the driver's report thread waits for a report before checking whether to stop.
_POLL_INTERVAL_S = 0.5


class RayExecutor(Executor):
    """Runs trials as Ray tasks; see the module docstring for the data flow.

    Args:
        address: None starts a private Ray instance on 127.0.0.1 owned by this executor
            (shut down by `close`); `"auto"`, `"host:port"` or `"ray://host:port"` joins an
            existing cluster. If Ray is already initialised in this process, that session
            is used and left running.
        resources_per_trial: what one rank of a trial needs: `cpu`, `gpu`, `memory`
            (bytes) and any custom Ray resource. A trial with `world_size` N asks for N
            times this, on one node or spread, as Ray schedules it.
        max_concurrency: trials in flight at once; default: as many as the cluster's
            CPUs/GPUs fit with `resources_per_trial`.
        max_calls_per_worker: tasks one worker process runs before Ray replaces it; None
            keeps Ray's default (unlimited for CPU tasks, 1 for GPU tasks).
        num_cpus, num_gpus, object_store_memory: sizes of the private instance
            (`address=None` only).
        report_timeout_s: how long a trial waits for a prune decision before it carries on
            without one (the driver is gone or stuck).
        placement: where the ranks of a multi-rank training trial go (each rank is a Ray
            actor in a placement group, `tuner.executors.ray_ranks`): PACK (default; spans
            nodes only when no node holds them all), SPREAD or STRICT_SPREAD.
        placement_timeout_s: how long a multi-rank trial waits for its placement group
            while the cluster is busy, before it fails with the reason.
        comm_env: extra environment for every rank (e.g. NCCL_DEBUG); the trial's own
            communication knobs (`nccl_algo`, `nccl_proto`) are added per trial.
    """

    def __init__(
        self,
        address: str | None = None,
        resources_per_trial: Mapping[str, float] | None = None,
        max_concurrency: int | None = None,
        *,
        max_calls_per_worker: int | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        object_store_memory: int | None = None,
        report_timeout_s: float = 300.0,
        placement: str = "PACK",
        placement_timeout_s: float = 600.0,
        comm_env: Mapping[str, str] | None = None,
    ) -> None:
        self._resources = _check_resources(
            {"cpu": 1, "gpu": 0} if resources_per_trial is None else dict(resources_per_trial)
        )
        _check_options(max_concurrency, max_calls_per_worker, report_timeout_s)
        self._max_calls = max_calls_per_worker
        self._report_timeout_s = float(report_timeout_s)
        _check_placement(placement, placement_timeout_s)
        self._placement = placement
        self._placement_timeout_s = float(placement_timeout_s)
        self._comm_env = dict(comm_env or {})

        import ray

        self._ray = ray
        self._connection: RayConnection = connect_ray(
            address, num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory
        )
        self._cluster = cluster_resources()
        try:
            self._check_fits_cluster(world_size=1, field_prefix="resources_per_trial")
            self._check_fits_a_node()
        except ValidationError:
            disconnect_ray(self._connection)  # do not leave a private instance behind
            raise
        self._max_concurrency = max_concurrency or self._concurrency_the_cluster_fits()

        self._lock = threading.Lock()
        self._closed = False
        self._next_submission = 0
        self._callbacks: dict[int, ReportCallback] = {}
        self._in_flight: dict[int, tuple[Any, Future[TrialResult]]] = {}  # id -> (ObjectRef, future)
        # Ray takes max_calls only where the function is declared, never in .options().
        declared = {"max_calls": self._max_calls} if self._max_calls is not None else {}
        self._remote = ray.remote(**declared)(_run_trial_task) if declared else ray.remote(_run_trial_task)
        self._broker: Any = None
        self._pump: threading.Thread | None = None
        self._rank_threads: dict[int, tuple[threading.Thread, Future[TrialResult]]] = {}

    # -- Executor contract -------------------------------------------------------------
    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def address(self) -> str:
        """The Ray cluster's GCS address (what `ray status --address` takes)."""
        return self._connection.address

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        future: Future[TrialResult] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("RayExecutor is closed; create a new one to run more trials")
            submission = self._next_submission
            self._next_submission += 1
        world_size = request.config.world_size
        unfit = self._check_fits_cluster(world_size=world_size, field_prefix="config", raise_=False)
        if unfit:
            future.set_result(TrialResult.failed(unfit))
            return future
        # Always: besides the reports, the broker holds the result of a task whose worker
        # must exit after a sticky CUDA error (module docstring, point 5).
        broker = self._ensure_broker()
        if on_report is not None:
            with self._lock:
                self._callbacks[submission] = on_report
        if world_size > 1 and _trains_in_ranks(request.workload):
            # rank actors live for one trial only; the broker is theirs for reports alone
            self._submit_ranks(request, submission, broker if on_report is not None else None, future)
            return future
        # world_size 1: the constructor checked that a node holds one rank; asking the GCS
        # for its nodes on every submit would cost each trial milliseconds
        one_node = _one_node_problem(self._resources, world_size) if world_size > 1 else None
        if one_node:
            self._forget(submission)
            future.set_result(TrialResult.failed(one_node))
            return future
        options: dict[str, Any] = {
            "num_cpus": self._resources.get("cpu", 0) * world_size,
            "num_gpus": self._resources.get("gpu", 0) * world_size,
            "max_retries": 0,
            "retry_exceptions": False,
            "name": f"tuner-trial-{request.trial_number}",
        }
        if self._resources.get("memory"):
            options["memory"] = self._resources["memory"] * world_size
        custom = {k: v * world_size for k, v in self._resources.items() if k not in _STANDARD_RESOURCES}
        if custom:
            options["resources"] = custom
        ref = self._remote.options(**options).remote(
            request.to_dict(),
            submission,
            broker,
            _registered_workloads(),
            self._report_timeout_s,
            on_report is not None,
        )
        with self._lock:
            self._in_flight[submission] = (ref, future)
        ref.future().add_done_callback(lambda done: self._finish(submission, done))
        return future

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            in_flight = list(self._in_flight.items())
        for _, (ref, _future) in in_flight:
            with contextlib.suppress(Exception):  # already finished, or its worker is gone
                self._ray.cancel(ref, force=True)
        for submission, (_ref, future) in in_flight:
            _resolve(future, TrialResult.failed("cancelled: the executor was closed while the trial ran"))
            self._forget(submission)
        with self._lock:
            rank_threads = list(self._rank_threads.values())
        for thread, _future in rank_threads:
            thread.join(timeout=30)  # it sees `_closed`, kills its actors and resolves
        for _thread, future in rank_threads:
            _resolve(future, TrialResult.failed("cancelled: the executor was closed while the trial ran"))
        if self._pump is not None:
            self._pump.join(timeout=5 * _POLL_INTERVAL_S)
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(self._broker)
        disconnect_ray(self._connection)

    # -- internals ---------------------------------------------------------------------
    def _submit_ranks(
        self, request: TrialRequest, submission: int, broker: Any, future: Future[TrialResult]
    ) -> None:
        """A multi-rank training trial: its ranks as actors in a placement group, driven
        from a thread of this process (`tuner.executors.ray_ranks`)."""
        from tuner.executors.ray_ranks import run_ranks_on_ray
        from tuner.knobs import comm_environment
        from tuner.workloads import get_workload

        report = _BrokerReporter(broker, submission, self._report_timeout_s).report if broker is not None else None
        item_unit = get_workload(request.workload).item_unit

        def drive() -> None:
            try:
                result = run_ranks_on_ray(
                    request,
                    per_rank=self._resources,
                    placement=self._placement,
                    registered=_registered_workloads(),
                    comm_env={**self._comm_env, **comm_environment(request.config)},
                    report=report,
                    placement_timeout_s=self._placement_timeout_s,
                    cancelled=lambda: self._closed,
                    item_unit=item_unit,
                )
            except Exception as exc:  # never leave the study waiting on a future
                result = TrialResult.failed(f"the multi-rank trial's driver raised {type(exc).__name__}: {exc}")
            with self._lock:
                self._rank_threads.pop(submission, None)
            _resolve(future, result)
            self._forget(submission)

        thread = threading.Thread(target=drive, name=f"tuner-ranks-{request.trial_number}", daemon=True)
        with self._lock:
            self._rank_threads[submission] = (thread, future)
        thread.start()

    def _check_fits_a_node(self) -> None:
        """One rank that no single node can hold would wait forever: refuse it now."""
        from tuner.executors.ray_nodes import alive_nodes, plan_placement

        plan = plan_placement(self._resources, 1, "PACK", alive_nodes())
        if plan.refused is not None:
            raise ValidationError(
                FieldProblem(
                    "resources_per_trial",
                    self._resources,
                    f"no node of the Ray cluster holds one rank: {plan.refused}",
                    "ask for less per rank, or add a larger node",
                )
            )

    def _finish(self, submission: int, done: Future[Any]) -> None:
        """Turn the Ray task's outcome into a TrialResult (runs on a Ray callback thread)."""
        with self._lock:
            entry = self._in_flight.get(submission)
        if entry is None:
            return  # resolved by close()
        exc = done.exception()
        if exc is None:
            _resolve(entry[1], TrialResult.from_dict(done.result()))
            self._forget(submission)
            return
        # The worker may have exited on purpose after leaving its result with the broker.
        try:
            handed = self._broker.collect.remote(submission)
        except Exception:  # Ray is shutting down: Ray's own reason is all there is
            self._resolve_failed(submission, exc, None)
            return
        handed.future().add_done_callback(lambda got: self._resolve_failed(submission, exc, got))

    def _resolve_failed(self, submission: int, exc: BaseException, got: Future[Any] | None) -> None:
        with self._lock:
            entry = self._in_flight.get(submission)
        if entry is None:
            return
        payload = None
        if got is not None and got.exception() is None:
            payload = got.result()
        result = TrialResult.from_dict(payload) if payload is not None else _result_from_ray_error(exc)
        _resolve(entry[1], result)
        self._forget(submission)

    def _forget(self, submission: int) -> None:
        with self._lock:
            self._in_flight.pop(submission, None)
            self._callbacks.pop(submission, None)

    def _ensure_broker(self) -> Any:
        with self._lock:
            if self._broker is None:
                # An async actor: many trials can wait on their decisions at once.
                broker_class = self._ray.remote(num_cpus=0, max_concurrency=10_000)(ReportBroker)
                self._broker = broker_class.remote()
                self._pump = threading.Thread(target=self._pump_reports, name="ray-report-pump", daemon=True)
                self._pump.start()
            return self._broker

    def _pump_reports(self) -> None:
        """Driver side of the broker: answer every report with the study's prune decision."""
        while not self._closed:
            try:
                batch = self._ray.get(self._broker.poll.remote(_POLL_INTERVAL_S))
            except Exception as exc:  # Ray shut down under us; nothing left to answer
                if not self._closed:
                    log.warning("report broker unavailable, intermediate reports stop: %s", exc)
                return
            decisions = []
            for ticket, submission, step, value in batch:
                with self._lock:
                    callback = self._callbacks.get(submission)
                prune = False
                if callback is not None:
                    try:
                        prune = bool(callback(step, value))
                    except Exception:  # the study's bug must not hang a worker
                        log.exception("on_report raised for step %s; the trial continues", step)
                decisions.append((ticket, prune))
            if decisions:
                self._broker.decide.remote(decisions)

    def _concurrency_the_cluster_fits(self) -> int:
        fits = []
        for name, amount in self._resources.items():
            if amount > 0:
                fits.append(int(self._cluster.get(_ray_resource_name(name), 0) // amount))
        return max(1, min(fits)) if fits else max(1, int(self._cluster.get("CPU", 1)))

    def _check_fits_cluster(self, *, world_size: int, field_prefix: str, raise_: bool = True) -> str | None:
        """A trial Ray could never schedule would wait forever; say so instead."""
        problems = []
        for name, amount in self._resources.items():
            need = amount * world_size
            have = self._cluster.get(_ray_resource_name(name), 0.0)
            if need > have:
                field = f"resources_per_trial.{name}" if world_size == 1 else f"{field_prefix}.world_size"
                value = amount if world_size == 1 else world_size
                problems.append(
                    FieldProblem(
                        field,
                        value,
                        f"needs {need:g} {name} per trial but the Ray cluster has {have:g}",
                        "ask for less per trial, lower world_size, or add nodes to the cluster",
                    )
                )
        if problems and raise_:
            raise ValidationError(problems)
        return "; ".join(str(p) for p in problems) or None


class ReportBroker:
    """A Ray async actor that parks each trial's report until the driver decides.

    Trials call `report` and wait; the driver calls `poll` (long poll) and `decide`.
    A task whose worker must exit after a sticky CUDA error `deposit`s its result first;
    the driver `collect`s it when Ray reports the worker's exit.
    Public only so Ray can pickle it by reference; not part of tuner's API.
    """

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._pending: list[tuple[int, int, int, float]] = []  # (ticket, submission, step, value)
        self._waiters: dict[int, Any] = {}  # ticket -> asyncio.Future[bool]
        self._arrived: Any = None  # asyncio.Event, created on the actor's event loop
        self._next_ticket = 0
        self._results: dict[int, dict[str, Any]] = {}  # submission -> TrialResult.to_dict()

    async def deposit(self, submission: int, payload: dict[str, Any]) -> None:
        self._results[submission] = payload

    async def collect(self, submission: int) -> dict[str, Any] | None:
        return self._results.pop(submission, None)

    def _event(self) -> Any:
        if self._arrived is None:
            self._arrived = self._asyncio.Event()
        return self._arrived

    async def report(self, submission: int, step: int, value: float, timeout_s: float) -> bool:
        ticket = self._next_ticket
        self._next_ticket += 1
        waiter = self._asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        self._pending.append((ticket, submission, step, value))
        self._event().set()
        try:
            return bool(await self._asyncio.wait_for(waiter, timeout_s))
        except TimeoutError:
            return False  # no decision in time: keep training rather than stall
        finally:
            self._waiters.pop(ticket, None)

    async def poll(self, timeout_s: float) -> list[tuple[int, int, int, float]]:
        if not self._pending:
            with contextlib.suppress(TimeoutError):
                await self._asyncio.wait_for(self._event().wait(), timeout_s)
        batch, self._pending = self._pending, []
        self._event().clear()
        return batch

    async def decide(self, decisions: list[tuple[int, bool]]) -> None:
        for ticket, prune in decisions:
            waiter = self._waiters.get(ticket)
            if waiter is not None and not waiter.done():
                waiter.set_result(prune)


class _BrokerReporter:
    """The `Reporter` a trial sees inside a Ray worker."""

    def __init__(self, broker: Any, submission: int, timeout_s: float) -> None:
        self._broker = broker
        self._submission = submission
        self._timeout_s = timeout_s

    def report(self, step: int, value: float) -> bool:
        import ray

        return bool(
            ray.get(self._broker.report.remote(self._submission, int(step), float(value), self._timeout_s))
        )


def _run_trial_task(
    request_data: dict[str, Any],
    submission: int,
    broker: Any,
    registered: dict[str, type],
    report_timeout_s: float,
    reports: bool = True,
) -> dict[str, Any]:
    """The body of one Ray task: runs in a Ray worker process, returns `TrialResult.to_dict()`
    (or, after a sticky CUDA error, hands it to the broker and ends the worker)."""
    import ray

    from tuner.trial.cuda_errors import is_sticky_cuda_error
    from tuner.trial_request import NullReporter
    from tuner.types import TrialStatus
    from tuner.workloads import get_workload, register_workload

    started = time.perf_counter()
    notes: list[str] = []
    try:
        for cls in registered.values():
            register_workload(cls)
        request = TrialRequest.from_dict(request_data)
        device, note = ray_trial_device(
            request.device,
            ray.get_gpu_ids(),
            ray_sets_visible_devices=not os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"),
        )
        if note is not None:
            request = dataclasses.replace(request, device=device)
            notes.append(note)
        workload = get_workload(request.workload)
        _use_task_cpus(workload, ray.get_gpu_ids())
        reporter = (
            _BrokerReporter(broker, submission, report_timeout_s)
            if broker is not None and reports
            else NullReporter()
        )
        # request.params were resolved when the study's spec was created
        result = workload.run_trial(request, reporter)
        if not isinstance(result, TrialResult):
            result = TrialResult.failed(
                f"workload {request.workload!r} returned {type(result).__name__}, not a TrialResult"
            )
    except Exception as exc:  # a workload's bug is the trial's failure, not the worker's
        result = TrialResult.failed(f"trial raised {type(exc).__name__}: {exc}{_where(exc)}")
    retiring = result.status is TrialStatus.FAILED and is_sticky_cuda_error(result.reason or "")
    if retiring:
        notes.append(
            "a CUDA error that breaks the process's CUDA context: this Ray worker exited after the "
            "trial and Ray starts a fresh one for later trials"
        )
    if notes:
        result = dataclasses.replace(result, notes=(*result.notes, *notes))
    payload = result.to_dict()
    if payload.get("duration_s") is None:
        payload["duration_s"] = time.perf_counter() - started
    payload["telemetry"] = {**(payload.get("telemetry") or {}), "nodes": [_this_node(0)]}
    if retiring and broker is not None:
        try:
            ray.get(broker.deposit.remote(submission, payload))
        except Exception:  # the driver is gone: nobody waits for the result
            log.warning(
                "could not hand the result of trial %s to the driver", request_data.get("trial_number")
            )
        # A returned value would keep this process (and its broken context) for the next
        # task; Ray replaces a worker that raises SystemExit.
        raise SystemExit(0)
    return payload


def _this_node(rank: int) -> dict[str, Any]:
    """Where this Ray task runs: each trial records its node(s)."""
    import ray

    return {
        "rank": rank,
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _use_task_cpus(workload: Any, gpu_ids: Sequence[Any]) -> None:
    """A CPU training trial in a Ray task trains on exactly the CPUs Ray gave the task, as
    torch intra-op threads (a rank actor does the same, `ray_ranks`): without it a worker
    process keeps whatever thread count it started with, and trials of one size would not
    be the same unit of work on different nodes."""
    import ray

    from tuner.workloads import TrainableWorkload

    if gpu_ids or not isinstance(workload, TrainableWorkload):
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    if cpus >= 1:
        from tuner.trial.device import use_cpu_threads

        use_cpu_threads(int(cpus))


def _trains_in_ranks(workload_name: str) -> bool:
    """A workload that trains a model runs its ranks as actors; others answer in one task."""
    from tuner.workloads import TrainableWorkload, get_workload

    try:
        return isinstance(get_workload(workload_name), TrainableWorkload)
    except Exception:  # an unknown name: the task reports it as the trial's failure
        return False


def _one_node_problem(resources: Mapping[str, float], world_size: int) -> str | None:
    """One Ray task runs on one node: say so when no node holds all of its share."""
    from tuner.executors.ray_nodes import alive_nodes, plan_placement

    plan = plan_placement(resources, world_size, "PACK", alive_nodes())
    if plan.refused is None and plan.note is None:
        return None
    detail = plan.refused or plan.note
    return (
        f"config.world_size={world_size}: a trial of a workload that does not train in ranks runs in one Ray "
        f"task, on one node; {detail}; fix: lower world_size or ask for less per rank"
    )


def _check_placement(placement: str, timeout_s: float) -> None:
    from tuner.executors.ray_nodes import PLACEMENTS

    problems = []
    if placement not in PLACEMENTS:
        problems.append(FieldProblem("placement", placement, "is not a Ray placement", "use PACK, SPREAD or STRICT_SPREAD"))
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        problems.append(FieldProblem("placement_timeout_s", timeout_s, "must be > 0 seconds", "e.g. 600"))
    if problems:
        raise ValidationError(problems)


def _registered_workloads() -> dict[str, type]:
    """Workloads registered by Python code in this process (not built-ins or entry points).

    They travel to the Ray worker as classes: cloudpickle sends an importable class by
    reference and one defined in a script's `__main__` by value, so both resolve there.
    """
    from tuner.workloads import registered_workloads

    return registered_workloads()


def _result_from_ray_error(exc: BaseException) -> TrialResult:
    """Map what Ray raised for a task into a `failed` result whose reason says why."""
    from ray import exceptions as rx

    message = _first_lines(str(exc))
    if isinstance(exc, rx.OutOfMemoryError):
        why = "Ray's memory monitor killed the trial's worker (the node ran low on host memory)"
    elif isinstance(exc, rx.WorkerCrashedError):
        why = "the Ray worker running the trial died without a result (crash, os._exit or a signal)"
    elif isinstance(exc, rx.TaskCancelledError):
        why = "the trial's Ray task was cancelled"
    elif isinstance(exc, (rx.NodeDiedError, rx.LocalRayletDiedError)):
        why = "the Ray node running the trial died"
    elif isinstance(exc, rx.RuntimeEnvSetupError):
        why = "Ray could not set up the trial's runtime environment"
    elif isinstance(exc, rx.RayTaskError):
        why = "the trial's Ray task raised"
    else:
        why = f"Ray reported {type(exc).__name__}"
    return TrialResult.failed(f"{why}: {message}")


def _where(exc: BaseException) -> str:
    """' (at file:line in function)' of the innermost frame, so a reason points at the bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {frame.filename}:{frame.lineno} in {frame.name})"


def _first_lines(text: str, limit: int = 800) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resolve(future: Future[TrialResult], result: TrialResult) -> None:
    with contextlib.suppress(InvalidStateError):  # close() and Ray's callback raced: first wins
        future.set_result(result)


def _ray_resource_name(name: str) -> str:
    return {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}.get(name, name)


def _check_resources(resources: dict[str, Any]) -> dict[str, float]:
    problems = []
    checked: dict[str, float] = {}
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            problems.append(
                FieldProblem(
                    f"resources_per_trial.{name}",
                    amount,
                    "must be a number >= 0",
                    "e.g. {'cpu': 1, 'gpu': 0}",
                )
            )
        elif name in ("CPU", "GPU"):
            problems.append(
                FieldProblem(
                    f"resources_per_trial.{name}",
                    amount,
                    "is spelled in Ray's upper case",
                    f"use {name.lower()!r}",
                )
            )
        else:
            checked[name] = float(amount)
    if not problems and not any(checked.get(k, 0) > 0 for k in ("cpu", "gpu")):
        problems.append(
            FieldProblem(
                "resources_per_trial",
                resources,
                "asks for no CPU and no GPU, so Ray would run every trial at once",
                "give cpu > 0 or gpu > 0",
            )
        )
    if problems:
        raise ValidationError(problems)
    return checked


def _check_options(
    max_concurrency: int | None,
    max_calls_per_worker: int | None,
    report_timeout_s: float,
) -> None:
    problems = []
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        problems.append(
            FieldProblem(
                "max_concurrency", max_concurrency, "must be an integer >= 1", "omit it or give e.g. 2"
            )
        )
    if max_calls_per_worker is not None and (
        isinstance(max_calls_per_worker, bool)
        or not isinstance(max_calls_per_worker, int)
        or max_calls_per_worker < 0
    ):
        problems.append(
            FieldProblem(
                "max_calls_per_worker",
                max_calls_per_worker,
                "must be an integer >= 0 (0 = never replace a worker)",
                "omit it to keep Ray's default",
            )
        )
    if not isinstance(report_timeout_s, (int, float)) or report_timeout_s <= 0:
        problems.append(FieldProblem("report_timeout_s", report_timeout_s, "must be > 0 seconds", "e.g. 300"))
    if problems:
        raise ValidationError(problems)
