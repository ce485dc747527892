"""The operations the ask/tell engine queues for the trial writer, and their outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CreateTrial:
    study_id: int
    template: Any  # optuna.trial.FrozenTrial with params, distributions, attrs, state RUNNING


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


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception that op raised)


__all__ = ["CreateTrial", "FinishTrial", "Heartbeat", "Operation", "Outcome", "SetIntermediate"]
