"""The operations the ask/tell engine queues for the trial writer, and their outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CreateTrial:
    study_id: int
    template: Any  # optuna.trial.FrozenTrial with params, distributions, attrs, state RUNNING
    #: the study's trial budget, checked in the database under the study-row lock the
    #: numbering takes (`batch_commit`), so servers sharing the study never exceed it
    n_trials: int | None = None


@dataclass
class SetIntermediate:
    trial_id: int
    step: int
    value: float


@dataclass
class Heartbeat:
    """A sign of life of a running trial (tuner.asktell.expiry); fails if it is finished."""

    trial_id: int


@dataclass
class FinishTrial:
    trial_id: int
    state: Any  # optuna.trial.TrialState
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)


Operation = CreateTrial | SetIntermediate | Heartbeat | FinishTrial


class TrialBudgetFull(RuntimeError):
    """A create refused because the study holds `n_trials` trials that count already
    (another server may have asked for them). Its only argument is the budget, so it
    survives the pickling back from the writer process."""

    def __init__(self, n_trials: int) -> None:
        super().__init__(n_trials)
        self.n_trials = n_trials

    def __str__(self) -> str:
        return f"the study holds its n_trials={self.n_trials} trials already"


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception that op raised)


__all__ = ["CreateTrial", "FinishTrial", "Heartbeat", "Operation", "Outcome", "SetIntermediate", "TrialBudgetFull"]
