"""The study loop: Optuna proposes configs, an executor measures them, Optuna learns.

`run_study(spec)` creates (or resumes, by name) an Optuna study in the storage, measures
the workload's default config once as the baseline, then keeps up to
`executor.max_concurrency` trials in flight with ask/tell until `spec.n_trials` trials
of the study are done, `spec.timeout_s` passes, or `stop_event` is set.

What the loop records, so every reader of the database sees the same study (see
`tuner.study.results` for the state mapping):
- study user attrs: the spec (`tuner.spec`), the baseline result and config, the
  hardware profile and the generator's reasoning when the generator ran;
- per trial: its full `TrialConfig`, its `TrialResult`, its tuner status, its owner
  process, and `constraint` (memory over the limit) for constraint-aware samplers.
  Owner, config and the first heartbeat go in one storage transaction, the result (and
  constraint) in one more before `tell`: storage commits are most of a near-empty
  trial's overhead (see docs/benchmarks-overhead.md).

MFU: each trial's request carries one device's peak FLOP/s for the trial's precision
(`trial_peak_flops`), read from the hardware profile — the one passed in, the generator's,
or this machine's probe (NVML or /proc, no timing) — so every result that knows its FLOPs
per item reports `mfu`.

The baseline is NOT an Optuna trial: it would be a point the sampler never proposed
(often outside the space), and a study resumed with more trials must not measure it twice.

Pruning: the runner reports the training loss. That is a meaningful early signal only
for a validation-loss objective (same direction), so only those studies report to the
pruner; a throughput study's trials run their (short) budget to the end. Multi-objective
studies never prune (Optuna does not support it). With validation checkpoints
(`budget.eval_every_items`) the runner reports the validation loss at each checkpoint
instead, and studies of the quality objectives (`tuner.study.quality_budget`) prune on it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tuner.errors import InfrastructureError, ValidationError
from tuner.executors.base import Executor
from tuner.storage.optuna_private import rdb_backend, running_heartbeats, study_id, study_storage, trial_id
from tuner.storage.rdb import resolve_storage_url, trial_attr_writer
from tuner.study.attrs import StudyAttr, TrialAttr, TrialKind
from tuner.study.confirm import DEFAULT_CONFIRM_PAIRS, ConfirmationPair, check_confirm, confirm_best
from tuner.study.create import open_study, resolve_spec
from tuner.study.events import ProgressBar, ProgressUpdate
from tuner.study.hardware_plan import (
    StudyGenerator,
    make_generator,
    probe_for_mfu,
    trial_peak_flops,
    trial_peak_memory_bandwidth,
)
from tuner.study.hparams import invalid_combination, trial_params
from tuner.study.outcome import StudyOutcome, study_outcome
from tuner.study.quality import (
    QualityHold,
    describe_hold,
    guards_quality,
    hold_quality_knobs,
    quality_problem,
    reference_config,
)
from tuner.study.quality_budget import QUALITY_BUDGET_OBJECTIVES, BudgetPlan
from tuner.study.recovery import Abandoned, fail_abandoned_trials, heartbeat_interval_s, this_process_owner
from tuner.study.results import (
    TrialRecord,
    baseline_of,
    best_record,
    objective_value,
    trial_record,
    trial_status,
)
from tuner.study.samplers import make_pruner, make_sampler
from tuner.study.spec import StudySpec
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialConfig, TrialResult, TrialStatus

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

    from tuner.hardware.profile import HardwareProfile
    from tuner.space.search_space import SearchSpace
    from tuner.workloads.base import Workload

__all__ = ["baseline_config", "run_study"]

log = logging.getLogger(__name__)

#: Stop asking when this many proposals in a row were predicted not to fit (the sampler
#: keeps proposing configs the generator rejects; measuring nothing helps nobody).
MAX_CONSECUTIVE_INFEASIBLE = 200
#: Stop the study when this many trials in a row never ran because the machinery failed
#: (`TrialResult.infrastructure`: a worker that cannot start). Such a cause fails every
#: trial the same way, so going on would only burn the trial budget as FAIL in seconds
#: (Katib's maxFailedTrialCount, but for failures that are not the trials' own).
MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES = 3
POLL_INTERVAL_S = 0.25
#: How often a process whose study reached n_trials only thanks to other processes'
#: RUNNING trials looks at them again (it waits for them rather than leave a lost host's
#: trial RUNNING and the study one trial short).
OTHERS_POLL_S = 0.5


# -- the loop -----------------------------------------------------------------------------------


@dataclass
class _InFlight:
    trial: optuna.Trial
    config: TrialConfig
    started: float
    params: dict[str, Any] | None = None  # the trial's own workload params, when it tunes hparams
    predicted_peak_bytes: int | None = None  # the generator's prediction it was launched under


class _StudyLoop:
    def __init__(
        self,
        spec: StudySpec,
        study: optuna.Study,
        space: SearchSpace,
        workload: Workload,
        params: dict[str, Any],
        base: TrialConfig,
        executor: Executor,
        generator: StudyGenerator | None,
        sampler: optuna.samplers.BaseSampler,
        notify: Callable[[ProgressUpdate], None] | None,
        stop_event: threading.Event | None,
        hardware: HardwareProfile | None = None,
        hold: QualityHold | None = None,
        budget_plan: BudgetPlan | None = None,
    ) -> None:
        self.spec = spec
        self.study = study
        self.space = space
        self.workload = workload
        self.params = params
        self.base = base
        self.executor = executor
        self.generator = generator
        self.sampler = sampler
        self.notify = notify
        self.stop_event = stop_event or threading.Event()
        self.hardware = hardware
        self.hold = hold or QualityHold(space)
        self.budget_plan = budget_plan or BudgetPlan(spec.objectives, base, scale_lr=False)
        # Trials that train are checked against the baseline's loss (tuner.study.quality).
        self.guard_quality = workload.learns and guards_quality(spec.objectives)
        self.baseline_result: TrialResult | None = None
        self.baseline_config: TrialConfig | None = None
        self.started = time.monotonic()
        self.in_flight: dict[Future[TrialResult], _InFlight] = {}
        self.consecutive_infeasible = 0
        self.consecutive_infrastructure = 0
        self.infrastructure_cause: str | None = None
        # Each trial gets its first heartbeat at launch; the periodic refresh starts one
        # interval later instead of re-writing it at the first poll.
        self.last_heartbeat = self.started
        # Heartbeats and the check for other processes' lost trials share one cadence,
        # derived from the study's grace (tuner.study.recovery).
        self.heartbeat_interval = heartbeat_interval_s(spec.heartbeat_grace_s)
        self.last_recovery = self.started
        self.objective = spec.objectives[0]
        self.unit = f"{workload.item_unit}/s" if self.objective == "throughput" else self.objective
        self.n_done_at_start = self._n_counted(finished_only=True)
        # Trials of the study that count toward n_trials, as last read from storage plus
        # this process's own launches. Other processes' launches show up at the next read
        # (once our trial numbers reach n_trials, see _is_surplus), so the estimate can
        # only be low; _is_surplus makes the overshoot that can cause harmless.
        self.known_counted = self._n_counted()
        self.baseline_value: float | None = None
        # Several attrs (and the heartbeat) per storage transaction; None on storages other
        # than tuner's RDBStorage, where the loop writes them one by one.
        self._write_attrs_batched = trial_attr_writer(study_storage(study))
        # Finished trials never change, so their parsed records are kept for progress events.
        self._finished_records: dict[int, TrialRecord] = {}

    # counting --------------------------------------------------------------------------------
    @staticmethod
    def _counts(trial: optuna.trial.FrozenTrial) -> bool:
        if trial.state.name == "WAITING" or trial.user_attrs.get(TrialAttr.KIND, TrialKind.TRIAL) != TrialKind.TRIAL:
            return False
        return trial_status(trial.user_attrs) is not TrialStatus.INFEASIBLE

    def _n_counted(self, finished_only: bool = False) -> int:
        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if finished_only and not t.state.is_finished():
                continue
            n += self._counts(t)
        return n

    def _target_reached(self) -> bool:
        return self.spec.n_trials is not None and self.known_counted >= self.spec.n_trials

    def _grid_exhausted(self) -> bool:
        if self.spec.sampler != "grid":
            return False
        if hasattr(self.sampler, "is_exhausted"):
            return bool(self.sampler.is_exhausted(self.study))
        from optuna.trial import TrialState

        return not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def stop_reason(self) -> str | None:
        if self.stop_event.is_set():
            return "stopped"
        if self.spec.timeout_s is not None and time.monotonic() - self.started >= self.spec.timeout_s:
            return "timeout"
        if self._target_reached():
            return "n_trials"
        if self._grid_exhausted():
            return "grid exhausted"
        if self.consecutive_infeasible >= MAX_CONSECUTIVE_INFEASIBLE:
            return f"{MAX_CONSECUTIVE_INFEASIBLE} proposals in a row were predicted not to fit"
        if self.infrastructure_stop:
            return self.infrastructure_stop
        return None

    @property
    def infrastructure_stop(self) -> str | None:
        if self.consecutive_infrastructure < MAX_CONSECUTIVE_INFRASTRUCTURE_FAILURES:
            return None
        return (
            f"{self.consecutive_infrastructure} trials in a row could not run (not the trials' own failures): "
            f"{self.infrastructure_cause}; fix that, then resume the study"
        )

    def observe_infrastructure(self, result: TrialResult) -> None:
        """Count a run that failed before the trial started, or reset the count."""
        if result.infrastructure:
            self.consecutive_infrastructure += 1
            self.infrastructure_cause = result.reason
        else:
            self.consecutive_infrastructure = 0

    # progress ----------------------------------------------------------------------------------
    def learn_unit(self, result: TrialResult) -> None:
        # A workload may only know its unit from its data (replay: tokens or samples).
        if self.objective == "throughput" and result.ok and result.item_unit:
            self.unit = f"{result.item_unit}/s"

    def emit(self, event: str, **about: Any) -> None:
        if self.notify is None:
            return
        records = self._records()
        best = best_record(records, self.spec.objectives)
        best_value = objective_value(best.result, self.objective) if best and best.result else None
        self.notify(
            ProgressUpdate(
                study_name=self.spec.name,
                event=event,
                n_done=sum(1 for r in records if r.counts_toward_target and r.state != "RUNNING"),
                n_target=self.spec.n_trials,
                n_running=len(self.in_flight),
                elapsed_s=time.monotonic() - self.started,
                timeout_s=self.spec.timeout_s,
                objective=self.objective,
                unit=self.unit,
                best_value=best_value,
                best_trial=best.number if best else None,
                baseline_value=self.baseline_value,
                n_done_at_start=self.n_done_at_start,
                **about,
            )
        )

    def _records(self) -> list[TrialRecord]:
        # Parsing every trial's config and result on each event would make a long study's
        # progress bar O(N^2); only trials that can still change are parsed again.
        records = []
        for t in self.study.get_trials(deepcopy=False):
            record = self._finished_records.get(t.number)
            if record is None:
                record = trial_record(t)
                if t.state.is_finished():
                    self._finished_records[t.number] = record
            records.append(record)
        return records

    # storage writes --------------------------------------------------------------------------------
    def _set_attrs(self, trial: optuna.Trial, attrs: dict[str, Any], *, heartbeat: bool = False) -> None:
        """Write `attrs` on `trial` (and its first heartbeat) in one storage transaction."""
        if self._write_attrs_batched is not None:
            self._write_attrs_batched(trial_id(trial), attrs, heartbeat=heartbeat)
            return
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if heartbeat:
            self._heartbeat(trial)

    def request_for(self, trial_number: int, config: TrialConfig, params: dict[str, Any] | None = None) -> TrialRequest:
        return TrialRequest(
            trial_number=trial_number,
            workload=self.spec.workload,
            params=self.params if params is None else params,
            config=config,
            budget=self.budget_plan.trial_budget(self.spec.budget),
            seed=self.spec.seed,
            device=self.spec.device,
            peak_flops=trial_peak_flops(self.hardware, config, self.spec.device),
            peak_memory_bandwidth=trial_peak_memory_bandwidth(self.hardware, self.spec.device),
        )

    # launching -----------------------------------------------------------------------------------
    def _ask(self) -> optuna.Trial:
        # SQLite shared by several processes can refuse a write with "database is locked"
        # even with a busy timeout (WAL snapshot conflicts); such a refusal is retryable.
        from sqlalchemy.exc import OperationalError

        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    # We send heartbeats ourselves (ask/tell has no optimize() thread).
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    return self.study.ask()
            except OperationalError:
                if attempt == 5:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def launch_one(self) -> None:
        from optuna.trial import TrialState

        trial = self._ask()
        owner = this_process_owner()
        if self._is_surplus(trial):
            self._set_attrs(trial, {TrialAttr.OWNER: owner, TrialAttr.KIND: TrialKind.SURPLUS})
            self.study.tell(trial, state=TrialState.FAIL)
            self.known_counted -= 1
            return
        values = self.space.suggest(trial)
        config = self.space.to_config(values, self.base)
        held = self.hold.apply(config)
        # The owner goes in with the config, one write instead of two. Until then (the
        # sampler's suggest) the trial has no owner: were this process to die right there,
        # the trial is recovered by its age (the study's heartbeat_grace_s) instead of at once.
        attrs: dict[str, Any] = {TrialAttr.OWNER: owner, TrialAttr.CONFIG: config.to_dict()}
        if isinstance(held, str):
            self._tell_infeasible(trial, None, attrs, reason=held)
            return
        config = self.budget_plan.configure(held)  # the batch-size LR rule of a quality budget
        attrs[TrialAttr.CONFIG] = config.to_dict()
        # The trial's hparams override the workload params (tuner.study.hparams).
        hparams = self.space.hparams_of(values)
        try:
            params = trial_params(self.workload, self.params, hparams) if hparams else None
        except ValidationError as exc:
            self._tell_infeasible(trial, None, attrs, reason=invalid_combination(exc))
            return
        if self.generator is not None:
            feasible, predicted = self.generator.check(config, params)
            if not feasible:
                self._tell_infeasible(trial, predicted, attrs)
                return
        else:
            predicted = None
        self.consecutive_infeasible = 0
        self._set_attrs(trial, attrs, heartbeat=True)
        request = self.request_for(trial.number, config, params)
        future = self.executor.submit(request, on_report=self._report_callback(trial))
        self.in_flight[future] = _InFlight(trial, config, time.monotonic(), params, predicted)

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """Whether `trial` would exceed n_trials because other processes took the last slots.

        Trial numbers are study-wide and each counted trial has its own, so at most
        `trial.number` counted trials come before this one: while `trial.number < n_trials`
        it cannot be surplus, and the O(N) scan of the storage is skipped (it cost a
        quarter of the loop's CPU at a few hundred trials). Past that point the scan
        counts exactly, whatever other `tuner worker` processes did.
        """
        if self.spec.n_trials is None:
            return False
        if trial.number < self.spec.n_trials:
            self.known_counted += 1  # this launch; other processes' show up in a later scan
            return False
        trials = self.study.get_trials(deepcopy=False)
        earlier = sum(self._counts(t) for t in trials if t.number < trial.number)
        self.known_counted = sum(self._counts(t) for t in trials)
        return earlier >= self.spec.n_trials

    def _tell_infeasible(
        self, trial: optuna.Trial, predicted: int | None, attrs: dict[str, Any], reason: str | None = None
    ) -> None:
        """Record a proposal never launched: predicted not to fit, or (`reason`) one that
        cannot keep the held effective batch."""
        from optuna.trial import TrialState

        self.consecutive_infeasible += 1
        limit = self.spec.memory_limit_bytes
        over = (predicted - limit) / limit if predicted is not None and limit else 1.0
        result = TrialResult(
            status=TrialStatus.INFEASIBLE,
            reason=reason
            or "predicted not to fit in memory"
            + (f" ({predicted / 2**30:.2f} GiB predicted)" if predicted is not None else ""),
            predicted_peak_bytes=predicted,
        )
        attrs = {**attrs, TrialAttr.RESULT: result.to_dict(), TrialAttr.CONSTRAINT: [max(over, 1e-6)]}
        self._set_attrs(trial, attrs)
        self.study.tell(trial, state=TrialState.PRUNED)
        self.known_counted -= 1  # counted at launch; infeasible proposals do not count
        self.emit("trial", trial_number=trial.number, trial_status="infeasible", trial_reason=result.reason)

    def _report_callback(self, trial: optuna.Trial) -> ReportCallback | None:
        prunes_on = {"val_loss"} | QUALITY_BUDGET_OBJECTIVES
        if self.spec.multi_objective or self.objective not in prunes_on or self.spec.pruner == "none":
            return None

        # Validation checkpoints (the same item counts for every config) are reported
        # from the first; training losses only after warm-up.
        warmup = 0 if self.spec.budget.eval_every_items is not None else self.spec.budget.warmup_steps
        direction = self.spec.directions[0]

        def on_report(step: int, value: float) -> bool:
            # Warm-up losses are (near) the shared initial loss of every trial; the pruners
            # compare each trial's best value so far, so reporting them would hide a trial
            # that diverges right after warm-up.
            if step <= warmup:
                return False
            from optuna.exceptions import UpdateFinishedTrialError

            try:
                trial.report(self.budget_plan.pruner_value(direction, value), step)
            except UpdateFinishedTrialError:
                return True  # failed as lost by another process: stop measuring it
            return trial.should_prune()

        return on_report

    def _heartbeat(self, trial: optuna.Trial | None = None) -> None:
        storage = study_storage(self.study)
        record = getattr(storage, "record_heartbeat", None)
        if record is None:
            return
        now = time.monotonic()
        if trial is not None:
            record(trial_id(trial))
            return
        if now - self.last_heartbeat >= self.heartbeat_interval:
            self.last_heartbeat = now
            for running in self.in_flight.values():
                record(trial_id(running.trial))

    def recover_lost(self) -> list[Abandoned]:
        """Every heartbeat interval: fail other processes' trials whose process
        died or whose host went silent for the study's grace, so a worker host lost
        mid-trial costs seconds, not a trial stuck RUNNING (tuner.study.recovery)."""
        moment = time.monotonic()
        if moment - self.last_recovery < self.heartbeat_interval:
            return []
        self.last_recovery = moment
        lost = fail_abandoned_trials(self.study, self.spec.heartbeat_grace_s)
        if lost:
            self.known_counted = self._n_counted()  # they no longer count; their configs are queued
            for trial in lost:
                log.warning("study %s: trial %d failed: %s", self.spec.name, trial.number, trial.reason)
                self.emit("recovered", trial_number=trial.number, trial_status="failed", trial_reason=trial.reason)
        return lost

    def others_running(self) -> bool:
        """Whether trials that count are RUNNING in other study-loop processes (this one has
        none). Only trials with a heartbeat: those are the ones whose loss can be told, and
        so worth waiting for; a trial some other client asked without one is not waited on."""
        from optuna.trial import TrialState

        running = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if self._counts(t)]
        if not running:
            return False
        read = running_heartbeats(study_storage(self.study), study_id(self.study))
        beating = read[1] if read is not None else {}
        return any(trial_id(t) in beating for t in running)

    def _finished_elsewhere(self, trial: optuna.Trial) -> bool:
        """Whether another process finished (failed as lost) a trial this one still runs."""
        return rdb_backend(study_storage(self.study)).get_trial(trial_id(trial)).state.is_finished()

    def _drop_lost(self, trial: optuna.Trial, result: TrialResult) -> None:
        """Our trial was failed as lost by another process (this one missed heartbeats for
        the whole grace: a stalled or cut-off host). Its failure stands and its config was
        queued again; this run's result is only logged."""
        self.known_counted = self._n_counted()
        log.warning(
            "study %s: trial %d was failed as lost by another process while it ran here (no heartbeat for "
            "heartbeat_grace_s=%g s); this run's result is dropped (%s)",
            self.spec.name, trial.number, self.spec.heartbeat_grace_s, result.status.value,
        )
        self.emit("recovered", trial_number=trial.number, trial_status="failed",
                  trial_reason="failed as lost by another process while it ran here; this run's result is dropped")

    # finishing -----------------------------------------------------------------------------------
    def finish(self, future: Future[TrialResult]) -> None:
        running = self.in_flight.pop(future)
        result = future.result()
        trial = running.trial
        self.observe_infrastructure(result)
        if result.infrastructure:
            self._tell_not_run(trial, result)
            return
        if result.predicted_peak_bytes is None and running.predicted_peak_bytes is not None:
            # kept with the measurement, so every trial shows what was predicted before launch
            result = dataclasses.replace(result, predicted_peak_bytes=running.predicted_peak_bytes)
        status, state, values, reason = self._classify(result, running.config)
        if status is not result.status:
            result = dataclasses.replace(result, status=status, reason=reason)
        attrs: dict[str, Any] = {TrialAttr.RESULT: result.to_dict()}
        if self.generator is not None and status in (TrialStatus.OK, TrialStatus.OOM):
            self.generator.observe(running.config, result, running.params)
        limit = self.spec.memory_limit_bytes
        if limit is not None and result.peak_memory_bytes is not None:
            attrs[TrialAttr.CONSTRAINT] = [(result.peak_memory_bytes - limit) / limit]
        # Written before tell: the sampler's after_trial reads the constraint from storage.
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self._set_attrs(trial, attrs)
            self.study.tell(trial, values=values, state=state)
        except (UpdateFinishedTrialError, ValueError):
            if not self._finished_elsewhere(trial):
                raise
            self._drop_lost(trial, result)
            return
        self.learn_unit(result)
        value = objective_value(result, self.objective) if status is TrialStatus.OK else None
        self.emit(
            "trial",
            trial_number=trial.number,
            trial_status=status.value,
            trial_value=value,
            trial_reason=reason,
        )

    def _tell_not_run(self, trial: optuna.Trial, result: TrialResult) -> None:
        """A trial whose worker never ran it: failed, not counted toward n_trials (like a
        trial of a dead process), and its config asked again first, so that a resumed
        study measures it."""
        from optuna.trial import TrialState

        self._set_attrs(trial, {TrialAttr.KIND: TrialKind.ABANDONED, TrialAttr.RESULT: result.to_dict()})
        self.study.tell(trial, state=TrialState.FAIL)
        self.known_counted -= 1
        if trial.params:
            self.study.enqueue_trial(dict(trial.params), user_attrs={TrialAttr.RETRY_OF: trial.number}, skip_if_exists=False)
        self.emit("trial", trial_number=trial.number, trial_status=result.status.value, trial_reason=result.reason)

    def _classify(
        self, result: TrialResult, config: TrialConfig
    ) -> tuple[TrialStatus, TrialState, list[float] | None, str | None]:
        from optuna.trial import TrialState

        if result.status is TrialStatus.OK:
            values = [objective_value(result, o) for o in self.spec.objectives]
            if any(v is None or not math.isfinite(v) for v in values):
                missing = [
                    o
                    for o, v in zip(self.spec.objectives, values, strict=True)
                    if v is None or not math.isfinite(v)
                ]
                reason = f"trial finished but measured no finite {', '.join(missing)}"
                return TrialStatus.FAILED, TrialState.FAIL, None, reason
            if self.guard_quality:
                # Fast but diverged is not a faster config: failed, so never best.
                problem = quality_problem(result, config, self.baseline_result, self.baseline_config)
                if problem is not None:
                    return TrialStatus.FAILED, TrialState.FAIL, None, problem
            return TrialStatus.OK, TrialState.COMPLETE, values, None  # type: ignore[return-value]
        if result.status is TrialStatus.PRUNED:
            return TrialStatus.PRUNED, TrialState.PRUNED, None, result.reason
        return result.status, TrialState.FAIL, None, result.reason

    def fail_in_flight(self, reason: str) -> None:
        from optuna.trial import TrialState

        for running in self.in_flight.values():
            try:
                self._set_attrs(
                    running.trial,
                    {TrialAttr.KIND: TrialKind.ABANDONED, TrialAttr.RESULT: TrialResult.failed(reason).to_dict()},
                )
                self.study.tell(running.trial, state=TrialState.FAIL)
            except Exception:
                log.exception("could not record interrupted trial %s", running.trial.number)
        self.in_flight.clear()

    # driving -------------------------------------------------------------------------------------
    def run(self) -> str:
        stop_reason = None
        try:
            while True:
                stop_reason = stop_reason or self.stop_reason()
                while stop_reason is None and len(self.in_flight) < self.executor.max_concurrency:
                    self.launch_one()
                    stop_reason = self.stop_reason()
                if not self.in_flight:
                    if stop_reason != "n_trials" or not self.others_running():
                        break
                    # n_trials is reached only counting trials other processes still run:
                    # wait for them, failing any whose host is lost, then run what is missing.
                    self.stop_event.wait(OTHERS_POLL_S)
                    self.recover_lost()
                    self.known_counted = self._n_counted()
                    stop_reason = None
                    continue
                done, _ = wait(list(self.in_flight), timeout=POLL_INTERVAL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    self.finish(future)
                self._heartbeat()
                self.recover_lost()
        except BaseException as exc:
            self.fail_in_flight(
                f"interrupted ({type(exc).__name__}) while running; the trial will be run again"
            )
            raise
        self.emit("end")
        return stop_reason or "n_trials"


# -- baseline ---------------------------------------------------------------------------------------


def baseline_config(workload: Workload, params: dict[str, Any], space: SearchSpace) -> TrialConfig:
    """The workload's default config with the space's fixed values applied: what a user
    runs before tuning, under the same fixed settings the trials use."""
    default = workload.default_config(params)
    return space.to_config(space.default_values(default), default)


def _measure_baseline(loop: _StudyLoop, executor: Executor) -> None:
    # derive: were the held space to pin the micro batch elsewhere, the accumulation follows
    # so the baseline trains the effective batch every trial holds.
    config = loop.hold.derive(baseline_config(loop.workload, loop.params, loop.space))
    result = executor.submit(loop.request_for(-1, config)).result()
    loop.observe_infrastructure(result)
    if result.infrastructure:  # not a measurement of the default config: measure it on resume
        loop.emit("baseline", trial_status=result.status.value, trial_reason=result.reason)
        return
    # time_to_target without a given target aims at the default config's final loss
    loop.budget_plan = loop.budget_plan.with_target_from(result)
    result = loop.budget_plan.scored_baseline(result)
    if loop.budget_plan.target is not None:
        loop.study.set_user_attr(StudyAttr.TARGET, loop.budget_plan.target)
    loop.study.set_user_attr(StudyAttr.BASELINE_CONFIG, config.to_dict())
    loop.study.set_user_attr(StudyAttr.BASELINE, result.to_dict())
    loop.baseline_result, loop.baseline_config = result, config
    loop.baseline_value = objective_value(result, loop.objective) if result.ok else None
    loop.learn_unit(result)
    loop.emit("baseline", trial_status=result.status.value, trial_reason=result.reason)


# -- entry point ------------------------------------------------------------------------------------


def run_study(
    spec: StudySpec,
    *,
    storage: str | None = None,
    executor: Executor | None = None,
    hardware: HardwareProfile | None = None,
    progress: bool | Callable[[ProgressUpdate], None] = False,
    stop_event: threading.Event | None = None,
    resume: bool = True,
    role: Literal["owner", "worker"] = "owner",
    confirm: int = DEFAULT_CONFIRM_PAIRS,
) -> StudyOutcome:
    """Run (or resume) study `spec.name` and return what it found.

    `role="worker"` joins a study another process created (`tuner worker`): it never
    measures the baseline or enqueues starting configs, it only runs trials.

    `confirm`: after the search, re-measure the default and the best config in this many
    back-to-back pairs and report the median pair ratio (`tuner.study.confirm`); 0 keeps
    the search's single measurements. Only the owner of a single-throughput study that
    was not stopped confirms.
    """
    from tuner.workloads import get_workload

    confirm = check_confirm(confirm)
    started = time.monotonic()
    url = resolve_storage_url(storage)
    workload = get_workload(spec.workload)
    # The one resolution of this study's params; everything below (generator, baseline,
    # every TrialRequest, runner, ranks, executors) uses spec.workload_params as is.
    spec = resolve_spec(spec, workload)
    params = spec.workload_params
    base = workload.default_config(params)
    if hardware is None:
        # A replayed table's numbers come from the machine that measured it: predict
        # memory (and MFU) for that machine, not for the one replaying it.
        hardware = workload.measured_on(params)

    # Before anything is written: a held value outside the space is the user's to fix.
    hold = hold_quality_knobs(spec.space, spec.objectives, reference_config(base, spec.space), learns=workload.learns)
    generator, hardware = (None, hardware)
    if spec.use_generator:
        generator, hardware = make_generator(spec, workload, params, base, hardware, hold)
    if hardware is None:
        hardware = probe_for_mfu()
    space = generator.plan.space if generator is not None else hold.space
    sampler = make_sampler(spec, space)
    # Loaded once, with the sampler the loop asks: the sampler needs the generator's space,
    # which needs no study, so it is made first.
    study = open_study(spec, url, resume=resume, workload=workload, sampler=sampler, pruner=make_pruner(spec))
    for lost in fail_abandoned_trials(study, spec.heartbeat_grace_s):
        log.warning("study %s: trial %d failed: %s", spec.name, lost.number, lost.reason)
    if hardware is not None and role == "owner":
        study.set_user_attr(StudyAttr.HARDWARE, hardware.to_dict())
    if role == "owner":
        study.set_user_attr(StudyAttr.QUALITY, describe_hold(hold))
    if generator is not None and role == "owner":
        study.set_user_attr(StudyAttr.GENERATOR, list(generator.reasoning))
        # A grid already covers every point; elsewhere the generator's picks go first.
        for values in generator.plan.starting_configs if spec.sampler != "grid" else ():
            study.enqueue_trial(dict(values), skip_if_exists=True)

    own_executor = executor is None
    if executor is None:
        from tuner.executors.local import LocalExecutor

        executor = LocalExecutor(workers=spec.workers, device=spec.device, preload_workloads=(spec.workload,))
    notify: Callable[[ProgressUpdate], None] | None
    notify = ProgressBar() if progress is True else (progress or None)
    plan = BudgetPlan.for_study(spec.objectives, spec.budget, reference_config(base, spec.space), spec.space)
    known_target = study.user_attrs.get(StudyAttr.TARGET)
    if plan.target is None and isinstance(known_target, (int, float)):
        plan = dataclasses.replace(plan, target=float(known_target))  # a resumed study keeps its target
    loop = _StudyLoop(
        spec, study, space, workload, params, base, executor, generator, sampler, notify, stop_event, hardware, hold,
        plan,
    )
    try:
        loop.emit("start")
        known_config, known_baseline = baseline_of(study)
        if known_baseline is not None:
            loop.baseline_result, loop.baseline_config = known_baseline, known_config
            loop.baseline_value = (
                objective_value(known_baseline, loop.objective) if known_baseline.ok else None
            )
            loop.learn_unit(known_baseline)
        elif spec.baseline and role == "owner" and not loop.stop_event.is_set():
            _measure_baseline(loop, executor)
        stopped_because = loop.run()
        if loop.infrastructure_stop:
            # Failed, not finished: the runner (CLI, server) reports the cause, and the
            # trials that never ran are queued for a resume.
            raise InfrastructureError(f"study {spec.name} stopped: {loop.infrastructure_stop}")
        if confirm and role == "owner" and not loop.stop_event.is_set():
            _confirm(loop, executor, confirm)
    finally:
        if own_executor:
            executor.close()
    return study_outcome(spec, study, url, time.monotonic() - started, stopped_because, generator, hold.reasoning)


def _confirm(loop: _StudyLoop, executor: Executor, pairs: int) -> None:
    def on_pair(index: int, n_pairs: int, pair: ConfirmationPair | None) -> None:
        if pair is None:
            what = "a measurement did not complete; pair dropped"
        else:
            what = (
                f"x{pair.ratio:.2f} ({pair.best_items_per_s:,.0f} vs "
                f"{pair.baseline_items_per_s:,.0f} {loop.unit})"
            )
        loop.emit("confirm", trial_reason=f"pair {index}/{n_pairs}: {what}")

    confirm_best(loop.spec, loop.study, executor, loop.request_for, pairs, on_pair)
