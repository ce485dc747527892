"""Model-based samplers (TPE, GP, CMA-ES, NSGA-II) of ask/tell studies, run in a process of
their own so that sampling uses a core of its own instead of the server's GIL.

A TPE ask of a 4-knob space costs ~4 ms of CPU at 300 trials and grows with the trials.
In the server process that CPU holds the GIL, so HTTP handling and the writer wait
behind it and it waits behind them: at 1 client the tell's answer waits for the next
trial being sampled ahead, at 8 clients every request queues behind the sampling.

The child keeps a replica of each hot study: an Optuna in-memory study with the same
sampler (same seed), the same trials in the same order, told the same results. It
answers an ask with the sampled trial (number, params, distributions, system attrs and
the config); the server then creates exactly that trial in its hot copy, which stays the
source of truth for everything else (pruning, the told-once checks, the database rows).
Since the replica sees the same history and draws from the same seeded sampler, it
samples what the hot copy's own sampler would have (a test checks this trial by trial).

Messages on one pipe, in order, so a tell sent before an ask is applied before it.
Only `load` and `ask` are answered; replies come back in request order and a reader
thread hands each to its waiter. If the child dies, every waiter gets
`SamplerProcessError` and each hot study falls back to sampling in the server (its hot
copy holds every trial, so nothing is lost; only the replica's sampler RNG is).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tuner.asktell.child_pipe import (
    READY,
    ChildStartError,
    messages,
    picklable_error,
    start_child,
    stop_child,
)
from tuner.asktell.suggest import AskedConfig
from tuner.storage.optuna_private import study_id, study_storage, tell_without_copy, trial_id

log = logging.getLogger("tuner.asktell.sampler")

#: Samplers worth a process hop: their ask costs milliseconds. Random and grid cost less
#: than the round trip and stay in the server.
REMOTE_SAMPLERS = frozenset({"tpe", "gp", "cmaes", "nsga2"})

#: Seconds an ask may take in the child before the study samples in the server instead
#: (a TPE ask of a 10,000-trial study takes well under a second).
ASK_TIMEOUT_S = 300.0


class SamplerProcessError(RuntimeError):
    """The sampler process is gone or could not be started."""


@dataclass
class SampledTrial:
    """What the child sampled for one ask."""

    number: int
    params: dict[str, Any]
    distributions: dict[str, Any]
    system_attrs: dict[str, Any]
    config: AskedConfig | None
    error: Exception | None = None  # the config was invalid: the replica failed this trial


class SamplerProcess:
    """The server's end of the sampler child (started on first use, shared by studies)."""

    def __init__(self) -> None:
        self._send_lock = threading.Lock()  # held only to send: tells are sent from the event loop
        self._start_lock = threading.Lock()
        self._waiting: collections.deque[Future[Any]] = collections.deque()
        self._child: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None

    # -- requests ---------------------------------------------------------------------
    def load(self, key: str, spec: dict[str, Any], base: dict[str, Any], trials: list[Any]) -> None:
        """Give the child a replica of a hot study (blocking until it is built)."""
        self._ensure_child()
        self._request(("load", key, spec, base, trials)).result()

    def ask(self, key: str) -> SampledTrial:
        try:
            return self._request(("ask", key)).result(timeout=ASK_TIMEOUT_S)
        except TimeoutError as exc:
            raise SamplerProcessError(f"no answer from the sampler process in {ASK_TIMEOUT_S:.0f} s") from exc

    def tell(self, key: str, number: int, state: str, values: list[float] | None, intermediate: dict[int, float]) -> None:
        self._send(("tell", key, number, state, values, intermediate))

    def add(self, key: str, trials: list[Any]) -> None:
        """Append trials the replica did not sample (made by another server of the same
        study), in the order the hot copy appends them, so both keep the same numbers."""
        self._send(("add", key, trials))

    def drop(self, key: str) -> None:
        with contextlib.suppress(SamplerProcessError):  # the child is gone, the replica with it
            self._send(("drop", key))

    def close(self) -> None:
        with self._send_lock:  # no request goes out after this
            child, conn = self._child, self._conn
            self._child = self._conn = None
        stop_child(child, conn)
        self._fail_waiting(SamplerProcessError("the sampler process was closed"))

    # -- plumbing ---------------------------------------------------------------------
    def _request(self, message: tuple[Any, ...]) -> Future[Any]:
        """Send a message the child answers; the future gets the answer."""
        future: Future[Any] = Future()
        self._send(message, reply_to=future)
        return future

    def _send(self, message: tuple[Any, ...], reply_to: Future[Any] | None = None) -> None:
        with self._send_lock:
            conn = self._conn
            if conn is None:
                raise SamplerProcessError("the sampler process is not running")
            if reply_to is not None:
                self._waiting.append(reply_to)  # replies come back in send order
            try:
                conn.send(message)
            except (OSError, ValueError) as exc:
                if reply_to is not None:
                    self._waiting.pop()
                raise SamplerProcessError(f"the sampler process is gone: {exc}") from exc

    def _ensure_child(self) -> None:
        # Spawning takes ~1 s: under its own lock, never the send lock, so tells of other
        # studies (sent from the event loop) are never held up by it.
        with self._start_lock:
            if self._child is not None and self._child.is_alive():
                return
            try:
                child, parent_end = start_child(sampler_main, (), "tuner-sampler")
            except ChildStartError as exc:
                raise SamplerProcessError(f"the sampler process did not start: {exc}") from exc
            with self._send_lock:
                self._child, self._conn = child, parent_end
            self._reader = threading.Thread(target=self._read, args=(parent_end,), name="tuner-sampler-reader", daemon=True)
            self._reader.start()

    def _read(self, conn: Any) -> None:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                with self._send_lock:
                    if self._conn is conn:
                        self._child = self._conn = None
                self._fail_waiting(SamplerProcessError("the sampler process exited"))
                return
            future = self._waiting.popleft()
            if kind == "ok":
                future.set_result(payload)
            else:
                future.set_exception(payload)

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


# -- the child ------------------------------------------------------------------------
def sampler_main(conn: Any) -> None:
    """Serve load/ask/tell/drop for the replicas until told to stop or orphaned (EOF)."""
    import optuna

    from tuner.asktell.tpe_speedup import install as install_tpe_speedup

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    install_tpe_speedup()
    replicas: dict[str, _Replica] = {}
    conn.send(READY)
    for message in messages(conn):
        kind, key = message[0], message[1]
        try:
            if kind == "load":
                replicas[key] = _Replica(*message[2:])
                conn.send(("ok", None))
            elif kind == "ask":
                conn.send(("ok", replicas[key].ask()))
            elif kind == "tell":
                replica = replicas.get(key)
                if replica is not None:
                    replica.tell(*message[2:])
            elif kind == "add":
                replica = replicas.get(key)
                if replica is not None:
                    replica.add(message[2])
            elif kind == "drop":
                replicas.pop(key, None)
        except Exception as exc:  # answered to the waiter; a tell has no waiter
            if kind in ("load", "ask"):
                conn.send(("error", picklable_error(exc)))
            else:
                log.exception("sampler replica %s: %s failed", key, kind)


class _Replica:
    def __init__(self, spec: dict[str, Any], base: dict[str, Any], trials: list[Any]) -> None:
        import optuna

        from tuner.asktell.suggest import base_config
        from tuner.study.samplers import make_sampler
        from tuner.study.spec import StudySpec

        self.spec = StudySpec.from_dict(spec)
        self.base = base_config(self.spec.space, base)
        self.study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(self.spec, self.spec.space),
            pruner=optuna.pruners.NopPruner(),
            directions=self.spec.directions,
        )
        for trial in trials:
            self.study.add_trial(trial)

    def ask(self) -> SampledTrial:
        import optuna

        from tuner.asktell.suggest import suggest_config
        from tuner.errors import ValidationError

        trial = self.study.ask()
        try:
            config: AskedConfig | None = suggest_config(self.spec.space, trial, self.base)
            error: Exception | None = None
        except ValidationError as exc:
            config, error = None, exc
        frozen = study_storage(self.study).get_trial(trial_id(trial))
        sampled = SampledTrial(trial.number, dict(frozen.params), dict(frozen.distributions), dict(frozen.system_attrs), config, error)
        if error is not None:  # as the hot copy does with an invalid config
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return sampled

    def add(self, trials: list[Any]) -> None:
        storage = study_storage(self.study)
        for trial in trials:
            storage.create_new_trial(study_id(self.study), template_trial=trial)

    def tell(self, number: int, state: str, values: list[float] | None, intermediate: dict[int, float]) -> None:
        import optuna

        storage = study_storage(self.study)
        replica_trial_id = storage.get_trial_id_from_study_id_trial_number(study_id(self.study), number)
        for step, value in intermediate.items():  # TPE ranks pruned trials by their last value
            storage.set_trial_intermediate_value(replica_trial_id, step, value)
        tell_without_copy(self.study, number, values, optuna.trial.TrialState[state])


__all__ = ["REMOTE_SAMPLERS", "SampledTrial", "SamplerProcess", "SamplerProcessError", "sampler_main"]
