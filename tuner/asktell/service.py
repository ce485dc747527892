"""Hands out the hot copy of each ask/tell study (loaded once, shared by all requests),
and owns what the copies share: the group-committing writer and the sampler process.
See `tuner.asktell.hot_study` for how one copy answers ask, report and tell."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from tuner.asktell.hot_study import HotStudy
from tuner.asktell.sampler_process import SamplerProcess
from tuner.asktell.suggest import AskedConfig
from tuner.asktell.trial_writer import QueuedWriter, TrialWriter
from tuner.errors import NotAskTellStudyError
from tuner.study.spec import StudySpec


class AskTellService:
    """Hands out the hot copy of each ask/tell study, loading it on first use."""

    def __init__(
        self,
        storage: Any,
        *,
        sample_ahead: bool = True,
        synchronous_commit: bool = True,
        writer_process: bool = True,
        sampler_process: bool = True,
        on_study_loaded: Callable[[], None] | None = None,
    ) -> None:
        self._storage = storage
        # called after each study's hot copy is built (the server freezes its objects out
        # of the GC's full passes there: api.runtime.gc_policy); the engine has no policy
        self._on_study_loaded = on_study_loaded
        self.sample_ahead = sample_ahead
        # started on the first study whose sampler it serves (tuner.asktell.sampler_process)
        self.sampler = SamplerProcess() if sampler_process else None
        self.writer = make_writer(storage, synchronous_commit=synchronous_commit, in_process=not writer_process)
        self._studies: dict[str, HotStudy] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, asyncio.Future[HotStudy]] = {}  # touched on the event loop only

    def cached(self, name: str) -> HotStudy | None:
        return self._studies.get(name)

    async def load_once(self, name: str, load: Callable[[], Awaitable[HotStudy]]) -> HotStudy:
        """`load()` the study's hot copy, once for all the requests that want it now.

        N clients starting on a study that is not loaded yet all ask at once; without
        this each request would read the study and all its trials (on a worker thread,
        competing for the same cores), and those cold asks set the benchmark's p99."""
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[name] = pending
            pending.add_done_callback(lambda _: self._loading.pop(name, None))
        # shield: one waiter's cancelled request must not cancel the others' load
        return await asyncio.shield(pending)

    def hot(self, name: str, spec: StudySpec, base: AskedConfig, *, accepting: bool) -> HotStudy:
        with self._lock:
            study = self._studies.get(name)
            if study is None:
                study = HotStudy(
                    name, spec, self._storage, self.writer, base, accepting, sample_ahead=self.sample_ahead, remote=self.sampler
                )
                self._studies[name] = study
                # its trials (and the sampler code imported on first use) live as long as
                # the copy: the hook can keep them out of the GC's full passes
                if self._on_study_loaded is not None:
                    self._on_study_loaded()
            return study

    def forget(self, name: str) -> None:
        with self._lock:
            study = self._studies.pop(name, None)
        if study is not None:
            study.close()

    def close(self) -> None:
        with self._lock:
            studies, self._studies = list(self._studies.values()), {}
        for study in studies:
            study.close()
        self.writer.close()
        if self.sampler is not None:
            self.sampler.close()


def make_writer(storage: Any, *, synchronous_commit: bool, in_process: bool) -> QueuedWriter:
    """The group-committing writer: in a child process (tuner.asktell.writer_process, the default:
    its SQL then never waits for this process's GIL), or on a thread of this process
    (`in_process`, and always for an in-memory SQLite database no other process can open)."""
    url = storage.engine.url
    if in_process or (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
        return TrialWriter(storage, synchronous_commit=synchronous_commit)
    from tuner.asktell.writer_process import ProcessTrialWriter

    return ProcessTrialWriter(url.render_as_string(hide_password=False), synchronous_commit=synchronous_commit)


def require_ask_tell(mode: str, name: str) -> None:
    """Refuse ask/tell on a study whose trials the server runs (NotAskTellStudyError)."""
    if mode != "ask_tell":
        raise NotAskTellStudyError(name)


__all__ = ["AskTellService", "make_writer", "require_ask_tell"]
