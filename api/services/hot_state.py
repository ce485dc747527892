"""How a server learns that ANOTHER server stopped, resumed or deleted an ask/tell study.

Every server answers ask, report and tell from its own hot copy of the study
(`tuner.asktell.hot_study`), built once from the study's row. The server that stops,
resumes or deletes a study evicts its own copy at once (`api.services.studies`); the other
API replicas sharing the database cannot be told. So each server re-reads the row's
state (one indexed SELECT on a worker thread) on the first ask/report/tell of a study
that comes `study_state_recheck_s` (default 1 s) or more after its last read, and all
requests arriving meanwhile wait for that one read.

The bound this gives: an ask that reaches any server `study_state_recheck_s` or more after
the stop committed is refused (409), because the read it waits for (or the last one) started
after the commit. Asks a server had already accepted before may still be answered. A
resume is seen within the same bound; a deletion makes the copy go (404), and a study
deleted and created again under the same name (a new row) is loaded afresh.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from api.db.models import StudyState
from api.problems import not_found
from api.repositories import studies as repo

if TYPE_CHECKING:  # the context holds this object: no import back at run time
    from api.context import ServiceContext
    from tuner.asktell.hot_study import HotStudy


@dataclass(frozen=True)
class RowState:
    """What a read of the study's row found, and when that read started."""

    row_id: int
    accepting: bool
    read_at: float  # time.monotonic() before the SELECT


def read_row_state(ctx: ServiceContext, name: str) -> RowState | None:
    """The row's state now (None: no such study any more). Runs on a worker thread."""
    started = time.monotonic()
    with ctx.sessions() as session:
        row = repo.get_by_name(session, name)
        if row is None:
            return None
        return RowState(row.id, row.state == StudyState.ASK_TELL, started)


class StudyStateRecheck:
    """Per study: the last read of its row, and the read in flight (module docstring)."""

    def __init__(self) -> None:
        self._seen: dict[str, RowState] = {}
        self._reading: dict[str, asyncio.Future[RowState | None]] = {}  # on the event loop only

    def loaded(self, name: str, state: RowState) -> None:
        """The hot copy was just built from this read of the row."""
        self._seen[name] = state

    async def current(self, ctx: ServiceContext, name: str, hot: HotStudy) -> HotStudy | None:
        """`hot` with its `accepting` as the row says now (re-read when the last read is
        `study_state_recheck_s` old); None when the row is a new one (the copy was evicted:
        load it again). Raises 404 (and evicts the copy) when the study is gone."""
        seen = self._seen.get(name)
        if seen is not None and time.monotonic() - seen.read_at < ctx.settings.study_state_recheck_s:
            return hot
        pending = self._reading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(read_row_state, ctx, name))
            self._reading[name] = pending
            pending.add_done_callback(lambda _: self._reading.pop(name, None))
        # shield: one waiter's cancelled request must not cancel the others' read
        state = await asyncio.shield(pending)
        if state is None:
            self._seen.pop(name, None)
            ctx.asktell.forget(name)
            raise not_found("name", name, "study", "list studies with GET /api/v1/studies")
        if seen is not None and state.row_id != seen.row_id:
            self._seen.pop(name, None)
            ctx.asktell.forget(name)
            return None
        hot.accepting = state.accepting
        if seen is None or state.read_at > seen.read_at:
            self._seen[name] = state
        return hot


__all__ = ["RowState", "StudyStateRecheck", "read_row_state"]
