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


class StudyNotFoundError(TunerError, LookupError):
    """No study with that name exists in the storage."""


class TrialPruned(TunerError):
    """Raised inside a trial when the pruner decides to stop it early."""
