"""The ask/tell write-behind in a process of its own, so its SQL never waits for the GIL.

Under 8 ask/tell clients the server's GIL is busy most of the time (HTTP handling on the
event loop, sampling on the studies' threads). The in-thread `TrialWriter` gives the GIL
up on every database call (each PostgreSQL round trip, each SQLite step) and then waits
to get it back behind those threads: a batch of ~4 operations that needs ~1 ms of
database work took 4 ms on SQLite and 9 ms on PostgreSQL (median, measured with the
REST benchmark), and every ask and tell waits for about one and a half batches.

`ProcessTrialWriter` has the same interface as `TrialWriter` (`submit`, `submit_async`,
`apply`, `close`) and the same semantics: the same `BatchCommitter` applies each batch
in one transaction, and a caller's future resolves only after the commit that holds its
operation. Only the place differs: a spawned child process owns the database
connection; this process sends it each batch over a pipe (one send and one receive per
batch instead of a GIL round trip per statement) and settles the futures from its reply.

The child is started on the first operation, not with the server, so a server that
never sees an ask/tell study never starts it. If it dies (killed, out of memory), the
batch in flight fails with `WriterProcessError` (it may or may not have been committed:
the caller is told, never silently answered) and the next batch starts a new child.
When this process dies, the child reads EOF on its pipe and exits.
"""

from __future__ import annotations

from multiprocessing.connection import wait
from typing import Any

from tuner.asktell.batch_commit import BatchCommitter
from tuner.asktell.child_pipe import (
    READY,
    ChildStartError,
    messages,
    picklable_error,
    start_child,
    stop_child,
)
from tuner.asktell.operations import Operation, Outcome
from tuner.asktell.trial_writer import QueuedWriter
from tuner.errors import ServiceUnavailableError


class WriterProcessError(ServiceUnavailableError, RuntimeError):
    """The writer process exited while a batch was in flight, or could not open the
    database (down when it started): retryable, a 503 from the service."""


class ProcessTrialWriter(QueuedWriter):
    """`TrialWriter`'s interface, committing in a child process (module docstring)."""

    def __init__(self, storage_url: str, *, synchronous_commit: bool = True) -> None:
        self.storage_url = storage_url
        self.synchronous_commit = synchronous_commit
        self.starts = 0  # children started: more than one means one died and was replaced
        self._child: Any = None
        self._conn: Any = None
        super().__init__()  # starts the sending thread

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def child_pid(self) -> int | None:
        return self._child.pid if self._child is not None and self._child.is_alive() else None

    def _close_backend(self) -> None:
        self._stop_child()

    def _apply(self, ops: list[Operation]) -> list[Outcome]:
        """One round trip: the batch to the child, its outcomes back."""
        for attempt in (1, 2):
            self._ensure_child()
            try:
                self._conn.send(ops)
            except (OSError, ValueError) as exc:
                # The child exited while idle (a closed pipe): nothing reached it, so a
                # new child can take the batch. Once only: a child that keeps dying is an error.
                self._stop_child()
                if attempt == 2:
                    raise WriterProcessError(f"the trial writer process keeps exiting: {exc}") from exc
                continue
            try:
                outcomes: list[Outcome] = self._conn.recv()
            except (EOFError, OSError) as exc:
                code = self._child.exitcode if self._child is not None else None
                self._stop_child()
                raise WriterProcessError(
                    f"the trial writer process exited (exit code {code}) with {len(ops)} operation(s) in flight; "
                    "they may or may not be committed: re-read the trials before retrying"
                ) from exc
            return outcomes
        raise AssertionError("unreachable")

    def _ensure_child(self) -> None:
        # the sentinel turns readable the moment the child exits; is_alive() can lag it
        if self._child is not None and not wait([self._child.sentinel], timeout=0):
            return
        self._stop_child()
        self.starts += 1
        try:
            self._child, self._conn = start_child(
                writer_main, (self.storage_url, self.synchronous_commit), "tuner-trial-writer"
            )
        except ChildStartError as exc:
            raise WriterProcessError(f"the trial writer process could not open the database: {exc}") from exc

    def _stop_child(self) -> None:
        child, conn = self._child, self._conn
        self._child = self._conn = None
        stop_child(child, conn)


def writer_main(conn: Any, storage_url: str, synchronous_commit: bool) -> None:
    """The child: open the database, then commit each batch it receives until told to
    stop (None) or its parent is gone (EOF)."""
    try:
        from tuner.storage.rdb import open_storage

        committer = BatchCommitter(open_storage(storage_url), synchronous_commit=synchronous_commit)
    except Exception as exc:  # reported to the parent, which fails the batch with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(READY)
    try:
        for ops in messages(conn):
            outcomes = committer.run_batch(ops)
            conn.send([(ok, value if ok else picklable_error(value)) for ok, value in outcomes])
    finally:
        committer.close()


__all__ = ["ProcessTrialWriter", "WriterProcessError", "writer_main"]
