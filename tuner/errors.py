"""Errors raised by tuner. Every message names the field, the bad value and the fix."""

from __future__ import annotations

from dataclasses import dataclass


class TunerError(Exception):
    """Base class of every error tuner raises on purpose."""

    #: Whether retrying the same call unchanged can succeed (OSS Vizier style).
    retryable: bool = False


@dataclass(frozen=True)
class FieldProblem:
    """One problem with one field of some input (a search space, a config, a payload)."""

    field: str
    value: object
    problem: str
    fix: str
    source: str | None = None  # the file or payload the field came from

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.field}={self.value!r}: {self.problem}; fix: {self.fix}"

    def as_dict(self) -> dict[str, object]:
        return {
            "field": self.field,
            "value": _jsonable(self.value),
            "problem": self.problem,
            "fix": self.fix,
            "source": self.source,
        }


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class ValidationError(TunerError, ValueError):
    """Bad input. Carries every problem found, not only the first one."""

    def __init__(self, problems: list[FieldProblem] | FieldProblem) -> None:
        self.problems: list[FieldProblem] = (
            [problems] if isinstance(problems, FieldProblem) else list(problems)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class SearchSpaceError(ValidationError):
    """A search space file or object is invalid."""


class ConfigError(ValidationError):
    """A trial config (or a value for one knob) is invalid."""


class WorkloadError(ValidationError):
    """An unknown workload name or bad workload parameters."""


class HardwareProfileError(ValidationError):
    """A hardware profile file cannot be read as a profile."""


class InfrastructureError(TunerError):
    """The study stopped because its trials could not run at all (a worker process that
    cannot start), not because of the trials themselves. Fix the cause, then resume."""

    retryable = True


class ServiceUnavailableError(TunerError):
    """A part the call needs (the database behind the ask/tell writer) cannot be reached
    now; the same call may succeed later (the service answers 503, as for a database error)."""

    retryable = True


class StudyNotFoundError(TunerError, LookupError):
    """No study with that name exists in the storage."""


class ConflictError(TunerError):
    """The input is valid but the study's state refuses it now (a trial told twice, a
    study with its n_trials used up). Not retryable: the same call meets the same state;
    the fix says what to do instead."""

    def __init__(self, field: str, value: object, problem: str, fix: str, *, message: str | None = None) -> None:
        self.problems: list[FieldProblem] = [FieldProblem(field, value, problem, fix)]
        super().__init__(message if message is not None else f"{field}={value!r} {problem}")


class NotAskTellStudyError(ConflictError):
    """Ask/tell on a study whose trials the server runs itself."""

    def __init__(self, name: str) -> None:
        super().__init__(
            "study",
            name,
            "runs its trials on the server (run: true)",
            "create a study with run: false for ask/tell",
            message=f"study {name!r} runs its trials on the server",
        )


class StudyExistsError(ConflictError):
    """A study of that name already exists in the storage."""

    def __init__(self, name: str) -> None:
        super().__init__("name", name, "is already an Optuna study in this database", "pick another name")


class TrialNotFoundError(TunerError, LookupError):
    """No trial with that number was handed out by this study. Not retryable: the fix
    (ask for a trial first) is a different call."""

    def __init__(self, number: int, fix: str, *, field: str = "trial_number") -> None:
        self.problems: list[FieldProblem] = [FieldProblem(field, number, "no such trial", fix)]
        super().__init__(f"no trial {number!r}")


class TrialPruned(TunerError):
    """Raised inside a trial when the pruner decides to stop it early."""
