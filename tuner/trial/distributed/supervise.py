"""Watching the ranks of one trial from the launching process.

Relays rank 0's intermediate values to the trial's reporter (and the pruner's answer
back), collects each rank's result, and stops watching as soon as the trial cannot end
well: a rank sent a non-ok result (its peers are then blocked in a collective that will
never complete), a rank died without a result, or no rank finished a step for
`timeout_s` seconds. The caller then kills whatever is left.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from tuner.trial.distributed.launch import RankProcesses
from tuner.trial_request import Reporter
from tuner.types import TrialResult, TrialStatus

_POLL_S = 0.2


@dataclass
class RankState:
    rank: int
    steps_done: int = 0
    last_heard: float = 0.0
    result: TrialResult | None = None
    death: str | None = None  # how the process ended when it sent no result
    pipe_open: bool = True


@dataclass
class Supervision:
    """What watching the ranks found; `first_failure` is the rank whose end stopped it."""

    states: list[RankState]
    first_failure: int | None = None
    timeout: str | None = None
    report_calls: int = 0
    notes: list[str] = field(default_factory=list)


def supervise(
    ranks: RankProcesses, reporter: Reporter, *, timeout_s: float, max_steps: int, clock=time.monotonic
) -> Supervision:
    now = clock()
    states = [RankState(rank=r, last_heard=now) for r in range(len(ranks.processes))]
    supervision = Supervision(states=states)
    while any(s.result is None and s.death is None for s in states):
        waitables: list[object] = []
        for state, conn, process in zip(states, ranks.connections, ranks.processes, strict=True):
            if state.result is None and state.death is None:
                waitables.append(conn if state.pipe_open else process.sentinel)
        wait(waitables, timeout=_POLL_S)  # type: ignore[arg-type]
        for state, conn in zip(states, ranks.connections, strict=True):
            _drain(state, conn, reporter, supervision, clock)
        for state, process in zip(states, ranks.processes, strict=True):
            if state.result is None and state.death is None and not state.pipe_open:
                process.join(0.05)
                if process.exitcode is not None:
                    state.death = describe_exit(process.exitcode)
        failed = [
            s for s in states if s.death is not None or (s.result is not None and not _ends_well(s.result))
        ]
        if failed:
            supervision.first_failure = failed[0].rank
            return supervision
        silent = [s for s in states if s.result is None and clock() - s.last_heard > timeout_s]
        if silent:
            steps = ", ".join(f"rank {s.rank}: {s.steps_done}" for s in states)
            supervision.timeout = (
                f"timed out: no progress for {timeout_s:g} s (optimizer steps finished of {max_steps}: "
                f"{steps}); a rank hung (a deadlocked collective or a stuck step) and the trial was killed"
            )
            return supervision
    return supervision


def _ends_well(result: TrialResult) -> bool:
    return result.status in (TrialStatus.OK, TrialStatus.PRUNED)


def _drain(state: RankState, conn: Connection, reporter: Reporter, supervision: Supervision, clock) -> None:
    """Handle every message this rank has sent so far."""
    while state.pipe_open and state.result is None:
        try:
            if not conn.poll():
                return
            message = conn.recv()
        except (EOFError, OSError):
            state.pipe_open = False  # the process is gone or going; its sentinel says how
            return
        kind = message[0]
        state.last_heard = clock()
        if kind == "step":
            state.steps_done = int(message[2])
        elif kind == "report":
            supervision.report_calls += 1
            decision = bool(reporter.report(int(message[1]), float(message[2])))
            conn.send(("prune", decision))
        elif kind == "result":
            result = message[2]
            state.result = (
                result
                if isinstance(result, TrialResult)
                else TrialResult.failed(
                    f"rank {state.rank} sent {type(result).__name__} instead of a TrialResult"
                )
            )


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exited with code {exitcode} without a result"
