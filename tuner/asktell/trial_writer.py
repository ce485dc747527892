"""Write-behind of ask/tell trials into Optuna's tables, with group commit.

The ask/tell hot path samples from an in-memory copy of the study (see
`tuner.asktell.hot_study`), then hands the resulting rows to this writer. One thread drains
the queue and applies everything waiting in ONE transaction, so N concurrent clients
cost about one commit per round instead of N ("natural" group commit: no fixed delay,
the batch is whatever queued while the previous commit ran, so one client pays one
commit and eight clients share one).

Durability: callers wait for the commit that contains their change (`apply`, or
`await submit_async(...)`), so every answer the API gives is already committed. A
server process that crashes after answering loses nothing it answered; SQLite runs in
WAL with synchronous=NORMAL, which survives a process crash (only an OS crash / power
loss can drop the last commits), PostgreSQL keeps its own `synchronous_commit` unless
`TUNER_PG_SYNCHRONOUS_COMMIT=off` is set (see `pg_synchronous_commit`).

`synchronous_commit = off` (PostgreSQL's documented per-session option, set only on the
writer's own connection): a commit returns before its WAL record is flushed to disk. A
crash of the *PostgreSQL server* (not of this process) can then lose the last ~3x
`wal_writer_delay` (600 ms by default) of answered commits; the database never becomes
inconsistent. It removes the WAL flush from every batch's latency. Default: on.

How a batch commits (a fixed number of statements, through Optuna's own tables) is
`tuner.asktell.batch_commit`; the operations are `tuner.asktell.operations`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from tuner.asktell.batch_commit import BatchCommitter
from tuner.asktell.operations import CreateTrial, FinishTrial, Operation, Outcome, SetIntermediate

log = logging.getLogger("tuner.asktell.writer")

#: Most operations applied in one transaction; bounds the time a batch holds the lock.
MAX_BATCH = 256

#: Environment variable: "on" (default, PostgreSQL's default) or "off" for the writer's
#: PostgreSQL connection; ignored on SQLite.
SYNCHRONOUS_COMMIT_ENV = "TUNER_PG_SYNCHRONOUS_COMMIT"


def pg_synchronous_commit(value: str | bool) -> bool:
    """Parse the `pg_synchronous_commit` setting: whether the writer's PostgreSQL commits
    wait for the WAL flush ("on", the durable default, or "off")."""
    from tuner.errors import FieldProblem, ValidationError

    if isinstance(value, bool):
        return value
    raw = value
    choice = raw.strip().lower()
    if choice not in ("on", "off"):
        raise ValidationError(
            FieldProblem(SYNCHRONOUS_COMMIT_ENV, raw, "is not on or off", "set it to on (durable, default) or off")
        )
    return choice == "on"


def drain_batch(source: queue.Queue[Any], first: Any) -> tuple[list[Any], bool]:
    """`first` plus whatever else is queued right now (up to MAX_BATCH); True if the
    stop marker (None) was among them. No waiting: a batch is whatever queued while the
    previous commit ran ("natural" group commit)."""
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            nxt = source.get_nowait()
        except queue.Empty:
            return batch, False
        if nxt is None:
            return batch, True
        batch.append(nxt)
    return batch, False


def settle(futures: list[Future[Any]], outcomes: list[Outcome]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class QueuedWriter:
    """The queue and the one thread every writer has: callers `submit` operations and get
    futures; the thread takes whatever is queued as one batch, has `_apply` commit it, and
    settles each future with its operation's outcome. Subclasses say where batches commit."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Operation, Future[Any]] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tuner-trial-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Operation) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed:  # nothing would ever apply it: fail now instead of never
            future.set_exception(RuntimeError("the trial writer is closed (the server is shutting down)"))
            return future
        self._queue.put((op, future))
        return future

    async def submit_async(self, op: Operation) -> Any:
        """Queue `op` and wait, without blocking the event loop, for its commit."""
        return await asyncio.wrap_future(self.submit(op))

    def apply(self, op: Operation, timeout: float = 60.0) -> Any:
        """Submit `op` and wait until it is committed; returns its result."""
        return self.submit(op).result(timeout=timeout)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._close_backend()

    def _apply(self, ops: list[Operation]) -> list[Outcome]:
        raise NotImplementedError

    def _close_backend(self) -> None:
        """Release what `_apply` commits through, after the thread has stopped."""

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = drain_batch(self._queue, item)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Operation, Future[Any]]]) -> None:
        futures = [future for _, future in batch]
        try:
            outcomes = self._apply([op for op, _ in batch])
        except Exception as exc:  # the batch could not be applied at all (writer process gone)
            for future in futures:
                future.set_exception(exc)
        else:
            settle(futures, outcomes)


class TrialWriter(QueuedWriter):
    """Applies trial operations to an Optuna RDBStorage in batched transactions, from a
    thread of this process (see `tuner.asktell.writer_process` for the out-of-process writer)."""

    def __init__(self, storage: Any, *, synchronous_commit: bool = True) -> None:
        self._committer = BatchCommitter(storage, synchronous_commit=synchronous_commit)
        self.synchronous_commit = synchronous_commit
        super().__init__()  # starts the thread: everything it uses exists by now

    @property
    def _conn(self) -> Any:  # the kept PostgreSQL connection (tests check its settings)
        return self._committer._conn

    def _apply(self, ops: list[Operation]) -> list[Outcome]:
        return self._committer.run_batch(ops)

    def _close_backend(self) -> None:
        self._committer.close()

    def _commit(self, ops: list[Operation]) -> list[Any]:
        return self._committer.commit(ops)


__all__ = [
    "MAX_BATCH",
    "SYNCHRONOUS_COMMIT_ENV",
    "CreateTrial",  # the operations, here too: callers submit them to a writer
    "FinishTrial",
    "Operation",
    "Outcome",
    "QueuedWriter",
    "SetIntermediate",
    "TrialWriter",
    "drain_batch",
    "pg_synchronous_commit",
    "settle",
]
