"""The executor contract: where trials run (local worker processes, a Ray cluster…).

An executor is handed `TrialRequest`s and hands back `TrialResult`s through futures. It
never decides anything about the search (that is the study loop's job) and never raises
for a trial's own failure: a crashed, killed or hung trial resolves its future with a
`failed` result whose `reason` says what happened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future

from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialResult

__all__ = ["Executor"]


class Executor(ABC):
    """Runs trials concurrently, up to `max_concurrency` at a time."""

    @property
    @abstractmethod
    def max_concurrency(self) -> int:
        """How many trials may run at once."""

    @abstractmethod
    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        """Start `request`; the future resolves with its result (never with an exception)."""

    def close(self) -> None:
        """Stop workers and release resources. Idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
