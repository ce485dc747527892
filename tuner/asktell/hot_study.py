"""The hot copy of one ask/tell study: ask, report and tell, fast enough for many clients.

Plain per-request RDBStorage ask/tell re-reads every trial of the study from SQL for each
sample (~25 pairs/s on SQLite here). Instead each ask/tell study the server touches gets a
`HotStudy`: an Optuna study over `InMemoryStorage`, loaded once from the database, which
the sampler and pruner read. Every change is also written to the database through the
group-committing `TrialWriter`, and the request answers only after that commit, so the
database is always complete and current (see `tuner.asktell.trial_writer` for the durability kept).

Where the time goes and how it is kept off the event loop:
- `ask` samples on the study's own one-thread executor: asks for one study are serialized
  by that queue (no lock held while sampling), TPE's 5-30 ms never blocks the event loop,
  and tells of other clients keep being answered meanwhile;
- the request then awaits its group commit (an asyncio future resolved by the writer
  thread), so no worker thread sits blocked on a database commit;
- `report`/`tell` update the hot copy on the event loop (a few hundred microseconds)
  and await their commit the same way;
- model-based samplers (TPE, GP, CMA-ES, NSGA-II) sample in a replica of the study held
  by the sampler child process (`tuner.asktell.sampler_process`); the sampling thread only waits
  for its answer (no GIL held), and the hot copy records the trial it sampled;
- rows are committed by the writer's child process (`tuner.asktell.writer_process`);
- sampling ahead: after every tell the sampling thread prepares the NEXT ask's trial at
  once (unless one is ready), so the sampler's 5-30 ms overlap the tell's commit and the
  HTTP round trips, and an ask finds its answer ready or partly done. Not after an ask:
  a trial prepared then would miss the result its client is about to tell.

Semantics of sampling ahead: the ready trial is a RUNNING trial of the hot copy only (not
in the database, not counted against n_trials) until one ask hands it out, once. It was
sampled after the latest tell at the time it was prepared, exactly as if the next ask
had arrived then; tells that land while it waits are not in it (with one client there
are none: it is prepared after the client's tell). The constant liar already treats it
as running, so trials sampled meanwhile steer around it. If the server stops, the ready
trial simply vanishes with the hot copy. `AskTellService(sample_ahead=False)` turns it off.

Durable first: nothing in the hot copy says a trial is finished before the database
does. `tell` writes the finished row, and only once that commit succeeded marks the trial
finished in the hot copy (and its sampler replica) and samples ahead. A tell whose write
fails (the database is down: the client gets a retryable 503) leaves the trial RUNNING in
the hot copy and in the database, so the client's retry is a fresh attempt. When the
database refuses the finish because the row is finished already (an earlier attempt
committed but its answer was lost, or another server took the tell), the row is read back:
the hot copy is brought in line with it, and the tell answers 200 with the stored state
if it carried the same outcome (state, values, result) and 409 otherwise. A report is
written first and then applied to the hot copy the same way.

Several servers on one study (API replicas): each has its own hot copy, and the database
numbers the trials (under the study row's lock), so numbers never collide. A report or
tell for a trial number this copy does not know is not refused: the copy first reads the
trials it is missing from the database (`_sync`), then serves it. The sampler's view of
other servers' work: once a copy has seen that another process adds trials to its study
(a database number it did not hand out, or such a report or tell), every sample first
refreshes the copy from the database if the last refresh is older than
`REFRESH_INTERVAL_S`: trials created elsewhere are added (RUNNING ones count for the
constant liar), and trials still RUNNING in the copy that the database has finished are
finished with the stored values. So a sampler sees its own server's results at once and
the other servers' within `REFRESH_INTERVAL_S` (one query over the RUNNING and newer
trials, not the whole study); a copy that never saw another writer never pays the query.
`n_trials` is held by the database, not by the copies: every create carries the budget and
the writer refuses one that would exceed it, under the same study-row lock
(`tuner.asktell.batch_commit`, `TrialBudgetFull`); that ask answers the same 409 as the
copy's own count, and the copy refuses every later ask without sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuner.asktell.expiry import expired_conflict
from tuner.asktell.operations import Heartbeat, TrialBudgetFull
from tuner.asktell.sampler_process import REMOTE_SAMPLERS, SamplerProcess
from tuner.asktell.suggest import AskedConfig, suggest_config
from tuner.asktell.tpe_speedup import install as install_tpe_speedup
from tuner.asktell.trial_writer import CreateTrial, FinishTrial, QueuedWriter, SetIntermediate
from tuner.errors import ConflictError, FieldProblem, TrialNotFoundError, ValidationError
from tuner.inference.config import InferenceConfig
from tuner.inference.objectives import INFERENCE_OBJECTIVES
from tuner.storage.optuna_private import study_id, study_storage, tell_without_copy, trial_id, trials_since
from tuner.study.attrs import TrialAttr, TrialKind
from tuner.study.objectives import user_objective_values
from tuner.study.results import objective_value
from tuner.study.spec import StudySpec
from tuner.types import TrialResult, TrialStatus

log = logging.getLogger("tuner.asktell")

#: The TrialResult field that holds each objective's value.
_OBJECTIVE_FIELD = {"throughput": "items_per_s", "val_loss": "val_loss", "quality_at_budget": "val_loss"}



def _result_field(objective: str) -> str:
    """Where a TrialResult carries an objective: a field, a user objective's metric (told
    values), or a task metric of the quality objectives (time_to_target, auc, perplexity)."""
    if objective in _OBJECTIVE_FIELD:
        return _OBJECTIVE_FIELD[objective]
    if ":" in objective:
        return "metrics." + objective.split(":", 1)[0]
    if objective in INFERENCE_OBJECTIVES:
        return "metrics." + objective
    return "val_metrics." + objective


#: Seconds a hot copy that shares its study with another server may lag the database
#: before a sample refreshes it (module docstring).
REFRESH_INTERVAL_S = 1.0

#: Seconds a refresh waits for this copy's own trial creations still being committed.
_CREATES_WAIT_S = 30.0

#: What `tell` takes: a TrialResult, or objective values (in objective order or by name).
TellOutcome = TrialResult | Sequence[float] | Mapping[str, float] | None


@dataclass(frozen=True)
class AskedTrial:
    """One ask's answer: the trial's number in the database, the config to run (knobs
    outside the space keep the workload's defaults), the values the sampler drew (knobs
    and hyperparameters, types kept), and the space's hyperparameters alone (`hparams:`,
    fixed ones included): what the user's own code applies."""

    number: int
    config: AskedConfig
    params: dict[str, Any]
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class _TrialRef:
    memory_number: int
    memory_trial_id: int
    rdb_trial_id: int


@dataclass
class _Sampled:
    """One ask's work done on the sampling thread; the commit is still pending."""

    config: AskedConfig
    params: dict[str, Any]
    committed: Future[Any]  # (rdb trial id, number) once the writer committed the row


@dataclass
class _Ready:
    """A trial sampled ahead in the hot copy, not yet handed out nor written."""

    trial: Any  # optuna.trial.Trial of the hot copy, RUNNING
    config: AskedConfig


class HotStudy:
    """An in-memory Optuna study mirroring one ask/tell study of the database."""

    def __init__(
        self,
        name: str,
        spec: StudySpec,
        storage: Any,
        writer: QueuedWriter,
        base: AskedConfig,
        accepting: bool,
        *,
        sample_ahead: bool = True,
        remote: SamplerProcess | None = None,
    ) -> None:
        import optuna

        from tuner.study.samplers import make_pruner, make_sampler

        install_tpe_speedup()
        self.name = name
        self.spec = spec
        self.base = base  # the workload's default config; knobs outside the space keep it
        self.accepting = accepting  # False while the study is stopped: no new asks
        self._writer = writer
        self.sample_ahead = sample_ahead
        self._ready: _Ready | None = None  # touched only on the sampling thread
        self.handed_out_ready = 0  # asks answered from a trial sampled ahead (tests, profiling)
        self._lock = threading.Lock()  # guards _refs and the told-once check
        # One thread per study: asks are sampled in arrival order, one at a time, which
        # keeps hot-copy and database trial numbers identical without holding a lock.
        self._sampler_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tuner-ask-{name[:20]}")
        self._storage = storage
        self.study_id: int = storage.get_study_id_from_name(name)
        self.memory = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(spec, spec.space),
            pruner=make_pruner(spec),
            directions=spec.directions,
        )
        self._memory_storage = study_storage(self.memory)
        self._memory_study_id = study_id(self.memory)
        self._refs: dict[int, _TrialRef] = {}
        self._counted = 0  # trials that count against n_trials (not recovery bookkeeping)
        # the database refused a create: n_trials are there (some asked through other servers)
        self._budget_full = False
        # What the copy knows of the database, for `_sync`: the highest trial id read from
        # it (every trial below is in the copy), the highest number, whether another
        # process adds trials to this study (a gap in the numbers: also set after a create
        # whose answer was lost, which costs only the refresh), and this copy's creations
        # not yet committed (a refresh waits for them, or would take them for another's).
        self._max_rdb_trial_id = -1
        self._max_number = -1
        self.shared = False
        self._refreshed_at = 0.0
        self._creating = 0
        self._created_cond = threading.Condition(self._lock)
        loaded = []
        for trial in storage.get_all_trials(self.study_id, deepcopy=False):
            if trial.state.name == "WAITING":
                continue  # enqueued points: the sampler sees them when asked
            loaded.append(trial)
            self._add_to_memory(trial)
        # The sampler's replica in the sampler process (tuner.asktell.sampler_process), if this
        # study's sampler is worth it; the hot copy stays the source of truth.
        self._remote: SamplerProcess | None = None
        self._remote_key = f"{name}#{id(self)}"
        if remote is not None and spec.sampler in REMOTE_SAMPLERS:
            try:
                remote.load(self._remote_key, spec.to_dict(), base.to_dict(), loaded)
                self._remote = remote
            except Exception:  # sampling stays in this process
                log.exception("study %s: no replica in the sampler process", name)

    def _add_to_memory(self, trial: Any) -> None:
        """Add a trial read from the database to the hot copy (no replica; see `_adopt`)."""
        memory_id = self._memory_storage.create_new_trial(self._memory_study_id, template_trial=trial)
        memory_number = self._memory_storage.get_trial(memory_id).number
        with self._lock:
            self._refs[trial.number] = _TrialRef(memory_number, memory_id, trial_id(trial))
            self._counted += trial.user_attrs.get(TrialAttr.KIND, TrialKind.TRIAL) == TrialKind.TRIAL
            self._max_rdb_trial_id = max(self._max_rdb_trial_id, trial_id(trial))
            self._max_number = max(self._max_number, trial.number)

    def close(self) -> None:
        self._sampler_thread.shutdown(wait=False)
        if self._remote is not None:
            self._remote.drop(self._remote_key)

    # -- ask ---------------------------------------------------------------------------
    async def ask(self) -> AskedTrial:
        """Sample a trial and wait for its row to be committed.

        Raises ConflictError when n_trials trials were asked for already, and the
        space's ValidationError when the sampled config is invalid."""
        loop = asyncio.get_running_loop()
        sampled = await loop.run_in_executor(self._sampler_thread, self._sample)
        try:
            _, number = await asyncio.wrap_future(sampled.committed)
        except TrialBudgetFull:  # the database's count, across every server of the study
            raise self._budget_conflict() from None
        return AskedTrial(number, sampled.config, sampled.params, self.spec.space.hparams_of(sampled.params))

    def _budget_conflict(self) -> ConflictError:
        return ConflictError(
            "n_trials",
            self.spec.n_trials,
            "trials have already been asked for",
            "create a new study, or tell the running trials and read the results",
        )

    def _budget_used(self) -> bool:
        """n_trials asked for: as this copy counts, or as the database said (replicas)."""
        return self.spec.n_trials is not None and (self._budget_full or self._counted >= self.spec.n_trials)

    def _created(self, trial: Any, committed: Future[Any]) -> None:
        """Runs on the writer thread when the new trial's commit ends, whether or not the
        request is still waiting (a client that disconnected still leaves a told-able trial)."""
        error = committed.exception()
        if error is not None:
            # Never reached the database: fail it in the hot copy too, or the constant
            # liar would keep steering around a trial nobody runs.
            self._fail_in_memory(trial_id(trial))
            if isinstance(error, TrialBudgetFull):
                self._budget_full = True  # for good: trials are never removed from a study
            with self._lock:
                self._creating -= 1
                self._created_cond.notify_all()
            return
        rdb_trial_id, number = committed.result()
        with self._lock:
            self._refs[number] = _TrialRef(trial.number, trial_id(trial), rdb_trial_id)
            if number > self._max_number + 1:  # numbers this copy never saw: another writer
                self.shared = True
            self._max_number = max(self._max_number, number)
            # not _max_rdb_trial_id: another server's trials may sit between the last
            # refresh and this one; the next refresh reads from there (and skips this one)
            self._creating -= 1
            self._created_cond.notify_all()

    def _sample(self) -> _Sampled:
        """Runs on the study's sampling thread: sample, then queue the row for commit."""
        import optuna

        if self._budget_used():
            raise self._budget_conflict()
        ready, self._ready = self._ready, None
        if ready is None:
            ready = self._sample_trial()
        else:
            self.handed_out_ready += 1
        trial = ready.trial
        frozen = self._memory_storage.get_trial(trial_id(trial))
        template = optuna.trial.FrozenTrial(
            number=0,
            state=optuna.trial.TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs=frozen.user_attrs,
            system_attrs=frozen.system_attrs,
            intermediate_values={},
            trial_id=0,
        )
        with self._lock:
            self._counted += 1
            self._creating += 1
        # Queued here, on the sampling thread, so database numbers follow sampling order.
        committed = self._writer.submit(CreateTrial(self.study_id, template, self.spec.n_trials))
        # added before the request's own waiter, so the number is registered when it wakes
        committed.add_done_callback(functools.partial(self._created, trial))
        return _Sampled(ready.config, dict(frozen.params), committed)

    def _sample_trial(self) -> _Ready:
        """Sample one trial in the hot copy (RUNNING there) with its config attrs."""
        import optuna

        if self.shared and time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL_S:
            try:
                self._sync()
            except Exception:  # sample from what the copy has; the next sample retries
                log.warning("study %s: could not refresh the hot copy from the database", self.name, exc_info=True)
        if self._remote is not None:
            try:
                return self._sample_remote(self._remote)
            except ValidationError:
                raise
            except Exception:  # the sampler process is gone: sample here from now on
                log.exception("study %s: the sampler process failed; sampling in the server", self.name)
                self._remote = None
        trial = self.memory.ask()
        try:
            config = suggest_config(self.spec.space, trial, self.base)
        except ValidationError:
            self.memory.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        for key, value in _asked_attrs(config).items():
            trial.set_user_attr(key, value)
        return _Ready(trial, config)

    def _sample_remote(self, remote: SamplerProcess) -> _Ready:
        """Create in the hot copy exactly the trial the replica sampled."""
        import optuna

        sampled = remote.ask(self._remote_key)
        user_attrs = {} if sampled.config is None else _asked_attrs(sampled.config)
        template = optuna.trial.FrozenTrial(
            number=0, state=optuna.trial.TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
            datetime_complete=None, params=sampled.params, distributions=sampled.distributions,
            user_attrs=user_attrs, system_attrs=sampled.system_attrs, intermediate_values={}, trial_id=0,
        )
        new_id = self._memory_storage.create_new_trial(self._memory_study_id, template_trial=template)
        trial = optuna.trial.Trial(self.memory, new_id)
        if trial.number != sampled.number:  # never expected: the two copies went apart
            self._remote = None
            remote.drop(self._remote_key)
            self._memory_storage.set_trial_state_values(new_id, optuna.trial.TrialState.FAIL)
            raise RuntimeError(f"study {self.name}: replica trial {sampled.number} != hot copy trial {trial.number}")
        if sampled.error is not None:  # failed in the replica too, as the hot copy would
            self._memory_storage.set_trial_state_values(new_id, optuna.trial.TrialState.FAIL)
            raise sampled.error
        assert sampled.config is not None
        return _Ready(trial, sampled.config)

    def _tell_remote(self, memory_trial_id: int, state: Any, values: list[float] | None) -> None:
        """Mirror a finished trial of the hot copy into the replica, which numbers its
        trials as the hot copy does (pruned trials go with their curve: TPE ranks them)."""
        if self._remote is None:
            return
        frozen = self._memory_storage.get_trial(memory_trial_id)
        number = frozen.number
        intermediate = dict(frozen.intermediate_values) if state.name == "PRUNED" else {}
        try:
            self._remote.tell(self._remote_key, number, state.name, values, intermediate)
        except Exception:  # the next ask notices and falls back
            log.exception("study %s: could not mirror trial %d to the sampler process", self.name, number)

    def _prepare_next(self) -> None:
        """Runs on the sampling thread: sample the next ask's trial unless one is ready,
        the study stopped, or n_trials would leave it unused."""
        if not self.sample_ahead or self._ready is not None or not self.accepting:
            return
        with self._lock:
            if self._budget_used():
                return
        try:
            self._ready = self._sample_trial()
        except Exception:  # the ask that needs it samples again and reports the error
            log.exception("sampling ahead for study %s failed", self.name)

    def _schedule_prepare(self) -> None:
        if self.sample_ahead and self.accepting:
            # RuntimeError: the executor was shut down because the study was evicted
            with contextlib.suppress(RuntimeError):
                self._sampler_thread.submit(self._prepare_next)

    def _fail_in_memory(self, memory_trial_id: int) -> None:
        import optuna

        with self._lock:
            self._counted -= 1
        self._memory_storage.set_trial_state_values(memory_trial_id, optuna.trial.TrialState.FAIL)
        self._tell_remote(memory_trial_id, optuna.trial.TrialState.FAIL, None)

    # -- the database's view: trials of other servers ---------------------------------
    def _sync(self) -> int:
        """Bring the hot copy in line with the database: add the trials it lacks and
        finish those it holds as RUNNING that the database has finished. Returns how many
        trials were added. Runs on the sampling thread only: it appends trials to the copy
        (and its replica), as asks do, so both keep numbering alike."""
        import optuna

        with self._lock:
            # this copy's own creations still committing: wait for them, or their new rows
            # would be taken for another server's
            self._created_cond.wait_for(lambda: self._creating == 0, timeout=_CREATES_WAIT_S)
            above = self._max_rdb_trial_id
        running = {
            ref.rdb_trial_id: ref
            for ref in self._open_refs(self._memory_storage.get_all_trials(
                self._memory_study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
            ))
        }
        trials = trials_since(self._storage, self.study_id, set(running), above)
        self._refreshed_at = time.monotonic()
        with self._lock:  # creates are serialized by the study row's lock: ids follow commit order
            self._max_rdb_trial_id = max([self._max_rdb_trial_id, *(trial_id(t) for t in trials)])
        added = 0
        for trial in sorted(trials, key=lambda t: t.number):
            if trial.state.name == "WAITING":
                continue  # enqueued points are left out, as at load
            with self._lock:
                ref = self._refs.get(trial.number)
            if ref is None:
                self._adopt(trial)
                added += 1
            elif trial.state.is_finished():
                self._finish_from_db(ref, trial)
        if added:
            self.shared = True
        return added

    def _open_refs(self, running: list[Any]) -> list[_TrialRef]:
        """The refs of the copy's RUNNING trials that are in the database (not the one
        sampled ahead, which is in neither the database nor the refs)."""
        ids = {trial_id(t) for t in running}
        with self._lock:
            return [ref for ref in self._refs.values() if ref.memory_trial_id in ids]

    def _adopt(self, trial: Any) -> None:
        """Add a trial another server created (the replica first: a tell of it, sent from
        the event loop, can only follow once its ref exists)."""
        if self._remote is not None:
            try:
                self._remote.add(self._remote_key, [trial])
            except Exception:  # sampling stays in this process from now on
                log.exception("study %s: could not add trial %d to the sampler process", self.name, trial.number)
                self._remote = None
        self._add_to_memory(trial)

    def _finish_from_db(self, ref: _TrialRef, stored: Any) -> None:
        """Finish in the hot copy a trial the database has finished (stored: its row)."""
        if not stored.state.is_finished():
            return
        values = stored.values if stored.state.name == "COMPLETE" else None
        with self._lock:
            memory_id = ref.memory_trial_id
            if self._memory_storage.get_trial(memory_id).state.name != "RUNNING":
                return
            for key, value in stored.user_attrs.items():
                self._memory_storage.set_trial_user_attr(memory_id, key, value)
            for step, value in stored.intermediate_values.items():
                self._memory_storage.set_trial_intermediate_value(memory_id, step, value)
            self._memory_storage.set_trial_state_values(memory_id, stored.state, values)
        self._tell_remote(memory_id, stored.state, values)

    async def _resolve(self, number: int) -> _TrialRef:
        """The trial's ref; a number the copy does not know is looked up in the database
        (another server may have handed it out) before it is refused with 404."""
        with self._lock:
            ref = self._refs.get(number)
        if ref is None and number >= 0:
            loop = asyncio.get_running_loop()
            # RuntimeError: the copy was evicted meanwhile (stop/resume/delete)
            with contextlib.suppress(RuntimeError):
                await loop.run_in_executor(self._sampler_thread, self._sync)
            with self._lock:
                ref = self._refs.get(number)
        if ref is None:
            raise TrialNotFoundError(number, f"ask for a trial first: POST /api/v1/studies/{self.name}/ask")
        return ref

    async def _read_back(self, ref: _TrialRef) -> Any:
        """The trial's row, after the database refused to change it as finished; the hot
        copy is brought in line with it."""
        stored = await asyncio.to_thread(self._storage.get_trial, ref.rdb_trial_id)
        self._finish_from_db(ref, stored)
        return stored

    # -- report / tell -----------------------------------------------------------------
    async def report(self, number: int, step: int, value: float) -> bool:
        """Record an intermediate value of a running trial; True when it should be pruned.

        Written first; the hot copy (which the pruner reads) takes it once committed."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError

        if not math.isfinite(value):
            raise ValidationError(FieldProblem("value", value, "is not a finite number", "report a finite loss or metric"))
        ref = await self._resolve(number)
        await self._write_alive(number, ref, SetIntermediate(ref.rdb_trial_id, step, value))
        try:
            if self.spec.multi_objective:  # Optuna cannot prune multi-objective trials
                self._memory_storage.set_trial_intermediate_value(ref.memory_trial_id, step, value)
                return False
            trial = optuna.trial.Trial(self.memory, ref.memory_trial_id)
            trial.report(value, step)
            return bool(trial.should_prune())
        except UpdateFinishedTrialError:  # finished in the copy since the commit: nothing left to prune
            return False

    async def heartbeat(self, number: int) -> None:
        """A sign of life of a running trial: extends its lease (tuner.asktell.expiry)."""
        ref = await self._resolve(number)
        await self._write_alive(number, ref, Heartbeat(ref.rdb_trial_id))

    async def _write_alive(self, number: int, ref: _TrialRef, op: SetIntermediate | Heartbeat) -> None:
        """Commit a report or heartbeat of a trial that must still be running; a finished
        (or expired) trial is a ConflictError that says which."""
        from optuna.exceptions import UpdateFinishedTrialError

        trial = self._memory_storage.get_trial(ref.memory_trial_id)
        if trial.state.is_finished():
            raise expired_conflict(number, trial.user_attrs) or _finished(number, trial.state.name)
        try:
            await self._writer.submit_async(op)
        except UpdateFinishedTrialError:  # told through another server, or expired, meanwhile
            stored = await self._read_back(ref)
            raise expired_conflict(number, stored.user_attrs) or _finished(number, stored.state.name) from None

    def refresh(self) -> None:
        """Bring the copy in line with the database soon (trials another server finished or
        a sweep expired), on the sampling thread; returns at once."""
        with contextlib.suppress(RuntimeError):  # evicted: nothing to refresh
            self._sampler_thread.submit(self._sync)

    def asked_all(self) -> bool:
        """True once n_trials trials were asked for through this copy or seen in the database."""
        with self._lock:
            return self.spec.n_trials is not None and self._counted >= self.spec.n_trials

    async def tell(
        self,
        number: int,
        outcome: TellOutcome,
        *,
        status: TrialStatus | str = TrialStatus.OK,
        metrics: Mapping[str, float] | None = None,
        telemetry: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> str:
        """Finish a running trial; returns its Optuna state name (COMPLETE, PRUNED, FAIL).

        `outcome` is a TrialResult (its status and objective fields are used; the other
        keywords are ignored) or the objective values, in objective order or by name,
        with `status`, `metrics`, `telemetry` and `reason` describing the rest.

        Durable first (module docstring): the hot copy says finished only after the
        commit. Telling a finished trial again with the same outcome answers its state
        again (a retry whose first answer was lost); another outcome is a ConflictError."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError

        ref = await self._resolve(number)
        if isinstance(outcome, TrialResult):
            result = outcome
            ordered = self._ordered_values(self._objective_values(outcome), outcome.status.value)
        else:
            metrics, telemetry = metrics or {}, telemetry or {}
            ordered = self._ordered_values(outcome, TrialStatus(status).value)
            self._check_slo(TrialStatus(status), metrics)
            by_objective = dict(zip(self.spec.objective_names, ordered or [], strict=False))
            result = TrialResult(
                status=TrialStatus(status),
                items_per_s=by_objective.get("throughput", metrics.get("items_per_s")),
                val_loss=by_objective.get("val_loss", metrics.get("val_loss")),
                # a user objective's value is kept under its name (tuner.study.objectives),
                # as is a serving objective's (qps_at_slo, p99_at_qps)
                metrics={
                    **metrics,
                    **user_objective_values(self.spec.objectives, by_objective),
                    **{n: v for n, v in by_objective.items() if n in INFERENCE_OBJECTIVES},
                },
                telemetry=dict(telemetry),
                reason=reason,
            )
        tuner_status = result.status
        state = {
            TrialStatus.OK: optuna.trial.TrialState.COMPLETE,
            TrialStatus.PRUNED: optuna.trial.TrialState.PRUNED,
        }.get(tuner_status, optuna.trial.TrialState.FAIL)
        values = ordered if state.name == "COMPLETE" else None
        user_attrs = {TrialAttr.RESULT: result.to_dict()}  # the status is read from the result
        if self.serving and result.status == TrialStatus.OK:
            user_attrs |= self._serving_result(ordered or [], result.metrics)
        told = self._memory_storage.get_trial(ref.memory_trial_id)
        if told.state.is_finished():
            return _same_outcome(number, told, state, values, user_attrs)
        try:
            await self._writer.submit_async(FinishTrial(ref.rdb_trial_id, state, values, user_attrs))
        except UpdateFinishedTrialError:
            # finished in the database, not here: an earlier attempt of this tell committed
            # but its answer was lost, or the client told it through another server
            return _same_outcome(number, await self._read_back(ref), state, values, user_attrs)
        if self._finish_told(ref, state, values, user_attrs):
            # sampled after the commit, and sees this result (module docstring); queued
            # behind any asks already waiting, so it never delays one
            self._schedule_prepare()
        return state.name

    def _finish_told(self, ref: _TrialRef, state: Any, values: list[float] | None, user_attrs: dict[str, Any]) -> bool:
        """Finish the trial in the hot copy after its finish committed; False if the copy
        had it finished already (a concurrent tell of the same outcome, or a refresh)."""
        with self._lock:
            if self._memory_storage.get_trial(ref.memory_trial_id).state.name != "RUNNING":
                return False
            for key, value in user_attrs.items():
                self._memory_storage.set_trial_user_attr(ref.memory_trial_id, key, value)
            # Optuna's tell minus `Study.tell`'s deepcopy of the finished trial, which
            # copies the config and result attrs and was ~10% of a pair's CPU.
            tell_without_copy(self.memory, ref.memory_number, values, state)
        # before the caller queues the prepare, so the replica has this result when it samples
        self._tell_remote(ref.memory_trial_id, state, values)
        return True

    @property
    def serving(self) -> bool:
        """A `kind: inference` study: the client serves each asked config itself."""
        from tuner.study.inference_spec import is_inference

        return is_inference(self.spec.space)

    def _check_slo(self, status: TrialStatus, metrics: Mapping[str, float]) -> None:
        """A serving trial told ok must say its p99 (`metrics.p99_ms`), within the study's
        SLO: over it, it would become best while breaking the SLO (never allowed:
        tuner.inference.objectives). Either is a field error."""
        from tuner.study.inference_spec import DEFAULT_SLO_P99_MS

        if status != TrialStatus.OK or not self.serving:
            return
        slo = self.spec.slo_p99_ms or DEFAULT_SLO_P99_MS
        p99 = metrics.get("p99_ms")
        if p99 is None:
            raise ValidationError(
                FieldProblem(
                    "metrics.p99_ms",
                    None,
                    "is required for an ok serving trial: best must be within the SLO",
                    f"send the p99 (ms) at the rate told, <= {slo:g}",
                )
            )
        if p99 > slo:
            raise ValidationError(
                FieldProblem(
                    "metrics.p99_ms",
                    p99,
                    f"is over the study's SLO ({slo:g} ms): an ok serving trial must meet it",
                    "tell the QPS of the highest rate that met the SLO, or status: pruned (never best)",
                )
            )

    def _serving_result(self, ordered: list[float], metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The told serving figures as the trial attr an inference study's trials carry
        (`tuner.inference.result`), so the serving views (QPS vs p99, best, the list's
        ratio) read ask/tell trials as they read measured ones."""
        from tuner.inference.result import InferenceResult, InferenceStatus
        from tuner.study.inference_spec import DEFAULT_SLO_P99_MS
        from tuner.study.inference_study import RESULT_ATTR

        by_objective = dict(zip(self.spec.objective_names, ordered, strict=False))

        def number(key: str) -> float | None:
            value = metrics.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        qps = by_objective.get("qps_at_slo", number("qps") or self.spec.target_qps or 0.0)
        result = InferenceResult(
            status=InferenceStatus.OK,
            qps=float(qps),
            p50_ms=number("p50_ms"),
            p95_ms=number("p95_ms"),
            p99_ms=number("p99_ms"),
            p99_at_target_ms=by_objective.get("p99_at_qps"),
            slo_p99_ms=self.spec.slo_p99_ms or DEFAULT_SLO_P99_MS,
            peak_memory_bytes=int(m) if (m := number("peak_memory_bytes")) is not None else None,
            notes=("told by the client (ask/tell): served on its own hardware",),
        )
        return {RESULT_ATTR: result.to_dict()}

    def _objective_values(self, result: TrialResult) -> dict[str, float] | None:
        """A TrialResult's value for each objective; None unless it finished ok."""
        if result.status != TrialStatus.OK:
            return None
        values = {n: objective_value(result, o) for o, n in zip(self.spec.objectives, self.spec.objective_names, strict=True)}
        missing = [
            FieldProblem(f"result.{_result_field(o)}", None, "is missing", f"set it: {n} is an objective")
            for o, n in zip(self.spec.objectives, self.spec.objective_names, strict=True)
            if values[n] is None
        ]
        if missing:
            raise ValidationError(missing)
        return values

    def _ordered_values(self, values: Sequence[float] | Mapping[str, float] | None, status: str) -> list[float] | None:
        objectives = list(self.spec.objective_names)
        if values is None:
            if status == "ok":
                raise ValidationError(
                    FieldProblem("values", None, "are required when status is ok", f"send one value per objective: {objectives}")
                )
            return None
        if isinstance(values, Mapping):
            problems = [
                FieldProblem(f"values.{k}", v, "is not an objective of this study", f"use {objectives}")
                for k, v in values.items()
                if k not in objectives
            ]
            problems += [
                FieldProblem(f"values.{o}", None, "is missing", "send a value for every objective")
                for o in objectives
                if o not in values
            ]
            if problems:
                raise ValidationError(problems)
            ordered = [float(values[o]) for o in objectives]
        else:
            if len(values) != len(objectives):
                raise ValidationError(
                    FieldProblem("values", values, f"has {len(values)} values for {len(objectives)} objectives", f"send values for {objectives} in that order")
                )
            ordered = [float(v) for v in values]
        bad = [FieldProblem("values", v, "is not a finite number", "send finite numbers") for v in ordered if not math.isfinite(v)]
        if bad:
            raise ValidationError(bad)
        return ordered


def _asked_attrs(config: AskedConfig) -> dict[str, Any]:
    """The attrs an asked trial carries: its config and kind; a serving config also under
    the inference study's key (`tuner.inference.config`), which the serving views read."""
    attrs: dict[str, Any] = {TrialAttr.CONFIG: config.to_dict(), TrialAttr.KIND: TrialKind.TRIAL}
    if isinstance(config, InferenceConfig):
        from tuner.study.inference_study import CONFIG_ATTR

        attrs[CONFIG_ATTR] = attrs[TrialAttr.CONFIG]
    return attrs


def _finished(number: int, state: str) -> ConflictError:
    return ConflictError("trial_number", number, f"is already finished ({state})", "ask for a new trial")


def _canonical(value: Any) -> str:
    """A value as the database stores it (JSON), so a result read back compares equal."""
    return json.dumps(value, sort_keys=True, default=str)


def _same_outcome(number: int, stored: Any, state: Any, values: list[float] | None, user_attrs: dict[str, Any]) -> str:
    """A tell of a trial that is finished already: its state when this tell carries the
    outcome stored (a retry), else a ConflictError."""
    expired = expired_conflict(number, stored.user_attrs)
    if expired is not None:  # the client's tell came after the trial's lease ran out
        raise expired
    stored_values = stored.values if stored.state.name == "COMPLETE" else None
    same = (
        stored.state == state
        and _canonical(stored_values) == _canonical(values)
        and all(_canonical(stored.user_attrs.get(key)) == _canonical(value) for key, value in user_attrs.items())
    )
    if same:
        return str(stored.state.name)
    raise ConflictError(
        "trial_number",
        number,
        f"is already finished ({stored.state.name}) with another outcome",
        "ask for a new trial (a retry of a tell must send the same values, status and metrics)",
    )


__all__ = ["REFRESH_INTERVAL_S", "AskedTrial", "HotStudy", "TellOutcome"]
