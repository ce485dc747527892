"""Ask/tell studies' housekeeping on every server: expire trials nobody tells, and mark a
study completed once its n_trials trials are told or expired.

The rules and the SQL are the engine's (`tuner.asktell.expiry`); this module only decides
when they run: a sweep every `trial_sweep_interval_s` on each server (any replica may
expire a trial; the database's conditional UPDATE makes each expiry happen once), and a
completion check right after a tell that may have been a study's last.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from api.db.models import StudyMode, StudyRow, StudyState, utcnow
from api.repositories import studies as studies_repo
from tuner.asktell.expiry import expire_stale_trials, study_done
from tuner.study.spec import StudySpec

if TYPE_CHECKING:
    from api.context import ServiceContext

log = logging.getLogger("tuner.api.asktell")

#: ask/tell studies whose trials may still be running (a stopped study still takes tells)
_SWEPT_STATES = (StudyState.ASK_TELL, StudyState.STOPPED)


def complete_if_done(ctx: ServiceContext, name: str, spec: StudySpec) -> bool:
    """Mark the ask/tell study `completed` when n_trials trials are told or expired and
    none runs; True if this call did. Conditional on the row still reading ask_tell, so
    servers racing on the last tell mark it once, and a stopped study stays stopped."""
    try:
        study_id = ctx.storage.get_study_id_from_name(name)
    except KeyError:  # deleted meanwhile
        return False
    if not study_done(ctx.storage, study_id, spec.n_trials):
        return False
    with ctx.sessions() as session:
        changed = session.execute(
            update(StudyRow)
            .where(StudyRow.name == name, StudyRow.mode == StudyMode.ASK_TELL, StudyRow.state == StudyState.ASK_TELL)
            .values(state=StudyState.COMPLETED, reason=f"all {spec.n_trials} trials told or expired", updated_at=utcnow())
        ).rowcount
        session.commit()
    return changed == 1


class TrialExpirySweeper:
    """A daemon thread: every `trial_sweep_interval_s`, expire each ask/tell study's stale
    trials, let this server's hot copy see what changed, and complete finished studies."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuner-trial-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.trial_sweep_interval_s):
            try:
                self.sweep()
            except Exception:  # the sweep must outlive a database hiccup; the next one retries
                log.exception("ask/tell expiry sweep failed")

    def sweep(self) -> int:
        """One pass over the ask/tell studies; returns how many trials it expired."""
        with self.ctx.sessions() as session:
            rows = session.execute(
                select(StudyRow.name, StudyRow.state).where(
                    StudyRow.mode == StudyMode.ASK_TELL, StudyRow.state.in_(_SWEPT_STATES)
                )
            ).all()
            specs = {name: (state, studies_repo.spec_of(session, name)) for name, state in rows}
        expired_total = 0
        for name, (state, spec) in specs.items():
            if spec is None:
                continue
            try:
                expired_total += self._sweep_study(name, state, spec)
            except Exception:  # one study's problem must not stop the others' expiry
                log.exception("ask/tell expiry sweep of study %s failed", name)
        return expired_total

    def _sweep_study(self, name: str, state: str, spec: StudySpec) -> int:
        storage = self.ctx.storage
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            return 0
        expired = []
        if spec.trial_timeout_s is not None:
            expired = expire_stale_trials(storage, study_id, spec.trial_timeout_s)
            for trial in expired:
                log.warning(
                    "study %s: trial %d expired (no report, heartbeat or tell since %s; trial_timeout_s=%g)",
                    name, trial.number, trial.last_seen, spec.trial_timeout_s,
                )
        hot = self.ctx.asktell.cached(name)
        if hot is not None:
            # trials this or another server expired, or other servers told: the sampler's
            # constant liar must stop steering around them
            hot.refresh()
        if state == StudyState.ASK_TELL:
            complete_if_done(self.ctx, name, spec)
        return len(expired)


__all__ = ["TrialExpirySweeper", "complete_if_done"]
