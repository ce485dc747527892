"""Runs studies created through REST in the background, and recovers them after a restart.

- At most `max_running_studies` studies run at once; the others wait as `queued`.
- Each server process is a runner with a row in `tuner_runners` and a heartbeat. A study
  being run records its runner. A runner whose heartbeat is older than
  `heartbeat_grace_s` (or that shut down) is dead: its `running` studies are claimed by a
  live runner, their trials left RUNNING are marked failed (kind `abandoned`, so they do
  not use up n_trials) and enqueued again with the same config, and the study resumes.
- Stop: the study's stop event is set; the loop finishes the trials in flight and the
  study becomes `stopped`. A graceful server shutdown stops loops the same way but leaves
  the studies `running` without a runner, so the next server resumes them at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import RESUMABLE_ON_RESTART, RunnerRow, StudyMode, StudyRow, StudyState, utcnow
from api.repositories import studies as studies_repo
from api.settings import Settings
from tuner.study.recovery import recover_abandoned_trials
from tuner.study.spec import StudySpec

log = logging.getLogger("tuner.api.runner")


@dataclass
class _Active:
    thread: threading.Thread
    stop_event: threading.Event = field(default_factory=threading.Event)
    user_stop: bool = False


class StudyRunner:
    """The service's `BackgroundRunner` (api.context): only what it needs, not the whole
    context, so the context can hold a runner without importing this module."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], storage: Any) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage  # the Optuna RDBStorage of the service's database
        self.id = str(uuid.uuid4())
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuner-runner", daemon=True)

    # -- public -------------------------------------------------------------------------
    def start(self) -> None:
        with self.sessions() as session:
            session.add(RunnerRow(id=self.id, host=socket.gethostname(), pid=os.getpid()))
            session.commit()
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def is_active(self, name: str) -> bool:
        with self._lock:
            return name in self._active

    def request_stop(self, name: str) -> None:
        with self._lock:
            active = self._active.get(name)
        if active is not None:
            active.user_stop = True
            active.stop_event.set()
        self.wake()

    def shutdown(self, timeout: float = 60.0) -> None:
        self._closing.set()
        self._wake.set()
        with self._lock:
            actives = list(self._active.values())
        for active in actives:
            active.stop_event.set()
        for active in actives:
            active.thread.join(timeout=timeout)
        self._thread.join(timeout=10)
        with self.sessions() as session:
            session.execute(update(RunnerRow).where(RunnerRow.id == self.id).values(stopped_at=utcnow()))
            session.commit()

    # -- scheduling ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception:  # the scheduler must outlive a database hiccup
                log.exception("runner tick failed")
            self._wake.wait(self.settings.heartbeat_interval_s)
            self._wake.clear()

    def _tick(self) -> None:
        now = utcnow()
        dead_before = now - timedelta(seconds=self.settings.heartbeat_grace_s)
        with self.sessions() as session:
            session.execute(update(RunnerRow).where(RunnerRow.id == self.id).values(heartbeat_at=now))
            dead = set(
                session.scalars(
                    select(RunnerRow.id).where(or_(RunnerRow.heartbeat_at < dead_before, RunnerRow.stopped_at.is_not(None)))
                ).all()
            )
            session.commit()
            rows = session.scalars(
                select(StudyRow).where(StudyRow.mode == StudyMode.RUN).where(
                    StudyRow.state.in_((*RESUMABLE_ON_RESTART, StudyState.STOPPING))
                ).order_by(StudyRow.id)
            ).all()
            for row in rows:
                orphaned = row.runner_id is None or row.runner_id in dead
                if row.state == StudyState.STOPPING:
                    if orphaned:  # its runner died while stopping: it is stopped now
                        self._finish(session, row.name, StudyState.STOPPED, None)
                    elif row.runner_id == self.id:
                        self.request_stop(row.name)  # stop asked through another server process
                    continue
                if self.is_active(row.name) or not (orphaned or row.runner_id == self.id):
                    continue
                with self._lock:
                    if len(self._active) >= self.settings.max_running_studies:
                        return
                claimed = session.execute(
                    update(StudyRow)
                    .where(StudyRow.id == row.id, StudyRow.state == row.state)
                    .where(or_(StudyRow.runner_id.is_(None), StudyRow.runner_id == row.runner_id))
                    .values(runner_id=self.id, state=StudyState.RUNNING, reason=None)
                ).rowcount
                session.commit()
                if claimed == 1:
                    self._launch(row.name, studies_repo.spec_of(session, row.name))

    def _launch(self, name: str, spec: StudySpec | None) -> None:
        active = _Active(thread=threading.Thread(target=self._run, args=(name, spec), name=f"study-{name}", daemon=True))
        with self._lock:
            self._active[name] = active
        active.thread.start()

    # -- one study ----------------------------------------------------------------------
    def _run(self, name: str, spec: StudySpec | None) -> None:
        with self._lock:
            active = self._active[name]
        state, reason = StudyState.COMPLETED, None
        try:
            from tuner.study import run_study

            if spec is None:  # the service created it with one; someone removed or broke the attr
                raise ValueError(f"study {name!r} has no readable tuner.spec user attribute to run")
            recovered = recover_abandoned_trials(self.storage, name)
            if recovered:
                log.warning("study %s: %d trial(s) of a dead runner marked failed and re-queued", name, recovered)
            from tuner.study.inference_spec import is_inference

            if is_inference(spec.space):
                from tuner.study.inference_study import run_inference_study

                run_inference_study(spec, storage=self.settings.storage, progress=False, stop_event=active.stop_event)
            else:
                with self._executor_for(spec) as executor:
                    run_study(spec, storage=self.settings.storage, executor=executor, stop_event=active.stop_event, resume=True)
            if active.stop_event.is_set():
                state = StudyState.STOPPED if active.user_stop else StudyState.RUNNING
        except Exception as exc:
            log.exception("study %s failed", name)
            state, reason = StudyState.FAILED, f"{type(exc).__name__}: {exc}"
            if self._closing.is_set() and not active.user_stop:
                state, reason = StudyState.RUNNING, None  # interrupted by shutdown: resume later
        finally:
            with self.sessions() as session:
                self._finish(session, name, state, reason)
            with self._lock:
                self._active.pop(name, None)
            self.wake()

    def _executor_for(self, spec: StudySpec) -> Any:
        """The executor the study named, as this server configured it."""
        from tuner.executors.choice import make_executor

        choices = self.settings.executor_choices()
        if spec.executor not in choices:
            raise ValueError(
                f"study {spec.name!r} runs on executor {spec.executor!r}, which this server does not offer "
                f"(it offers {', '.join(choices)}); restart it with `tuner serve --executor {spec.executor}`"
            )
        choice = choices[spec.executor]
        workers = max(spec.workers, self.settings.executor_workers)
        return make_executor(
            choice,
            workers=workers if choice.kind == "local" or workers > 1 else None,
            device=spec.device,
            preload_workloads=(spec.workload,),
        )

    def _finish(self, session: Any, name: str, state: str, reason: str | None) -> None:
        # RUNNING here means "interrupted by shutdown": release it for the next runner.
        session.execute(
            update(StudyRow).where(StudyRow.name == name).values(state=state, reason=reason, runner_id=None, updated_at=utcnow())
        )
        session.commit()

