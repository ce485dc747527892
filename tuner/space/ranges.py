"""Range parameters of a search space: `FloatParam` and `IntParam`.

They check what Optuna would reject later (log with low <= 0, step with log, a step that
does not divide high - low) when the space is loaded, where the error can name the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tuner.errors import FieldProblem
from tuner.space.conditions import Condition, is_number, same_value
from tuner.space.params import CategoricalParam, ParamSpec


def _number(value: Any, field: str, problems: list[FieldProblem], *, integer: bool = False) -> Any:
    """Check a bound/step is a finite number (an integer for int params); return it normalised."""
    kind = "an integer" if integer else "a number"
    if not is_number(value):
        fix = f"write {kind}, e.g. 4"
        if isinstance(value, str):
            fix += " (unquoted)"
        problems.append(FieldProblem(field, value, f"must be {kind}, got {type(value).__name__}", fix))
        return None
    if not math.isfinite(value):
        problems.append(FieldProblem(field, value, "must be finite", f"write {kind}"))
        return None
    if integer:
        if not float(value).is_integer():
            problems.append(
                FieldProblem(field, value, "must be an integer", f"use {math.floor(value)} or type: float")
            )
            return None
        return int(value)
    return float(value)


def _check_log_flag(param: ParamSpec, log: Any, problems: list[FieldProblem]) -> None:
    if not isinstance(log, bool):
        problems.append(
            FieldProblem(f"{param.field}.log", log, "must be true or false", "write log: true or log: false")
        )


def _check_range(param: ParamSpec, low: Any, high: Any, log: Any, problems: list[FieldProblem]) -> None:
    if low is None or high is None:
        return
    if low > high:
        problems.append(
            FieldProblem(
                f"{param.field}.low",
                low,
                f"is greater than high ({high})",
                f"swap them: low: {high}, high: {low}",
            )
        )
    if log is True and low <= 0:
        problems.append(
            FieldProblem(f"{param.field}.low", low, "must be > 0 on a log scale", "set low > 0 or log: false")
        )


def _check_step(
    param: ParamSpec, low: Any, high: Any, step: Any, log: Any, problems: list[FieldProblem]
) -> None:
    field = f"{param.field}.step"
    if step <= 0:
        problems.append(FieldProblem(field, step, "must be > 0", "use a positive step"))
        return
    if log is True and (param.kind == "float" or step != 1):
        problems.append(
            FieldProblem(
                field,
                step,
                "cannot be combined with log: true (Optuna rejects it)",
                "drop step or set log: false",
            )
        )
        return
    if low is None or high is None or low > high:
        return
    span = high - low
    count = span / step
    if abs(count - round(count)) > 1e-9 * max(1.0, count):
        top = low + math.floor(count + 1e-9) * step
        if param.kind == "float":
            top = float(f"{top:.12g}")
        problems.append(
            FieldProblem(
                field,
                step,
                f"does not divide the range: high - low = {span:g} is not a multiple of {step:g} "
                "(Optuna requires (high - low) divisible by step)",
                f"set high to {top:g} or pick a step that divides {span:g}",
            )
        )


@dataclass(frozen=True)
class FloatParam(ParamSpec):
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Condition | None = None
    hparam: bool = dataclasses.field(default=False, kw_only=True)

    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        problems, knob = self._start()
        low = _number(self.low, f"{self.field}.low", problems)
        high = _number(self.high, f"{self.field}.high", problems)
        _check_log_flag(self, self.log, problems)
        step = None if self.step is None else _number(self.step, f"{self.field}.step", problems)
        _check_range(self, low, high, self.log, problems)
        if step is not None:
            _check_step(self, low, high, step, self.log, problems)
        for attr, value in (("low", low), ("high", high)):
            if value is not None:
                self._check_legal(knob, attr, value, problems)
                object.__setattr__(self, attr, value)
        if step is not None:
            object.__setattr__(self, "step", step)
        self._raise(problems)

    def contains(self, value: object) -> bool:
        if not is_number(value) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        count = (value - self.low) / self.step
        return abs(count - round(count)) <= 1e-9 * max(1.0, count)

    def finite_values(self) -> tuple[Any, ...] | None:
        if self.step is None:
            return None
        count = round((self.high - self.low) / self.step)
        # Printed to 12 significant digits so 0.1 * 3 lands on 0.3, as a user would write it.
        return tuple(float(f"{self.low + i * self.step:.12g}") for i in range(count + 1))

    def bounds(self) -> tuple[float, float] | None:
        return self.low, self.high

    def domain_text(self) -> str:
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"a float in [{self.low:g}, {self.high:g}]{scale}{step}"

    def suggest(self, trial: Any) -> float:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step is not None:
            data["step"] = self.step
        return data

    def narrowed(
        self, low: float | None, high: float | None, choices: Sequence[Any] | None
    ) -> ParamSpec | None:
        if choices is not None:
            return _choices_within(self, low, high, choices)
        if self.step is not None:
            return _narrow_stepped(self, low, high)
        new_low = self.low if low is None else max(self.low, float(low))
        new_high = self.high if high is None else min(self.high, float(high))
        if new_low > new_high:
            return None
        return FloatParam(self.name, new_low, new_high, log=self.log, when=self.when, hparam=self.hparam)


@dataclass(frozen=True)
class IntParam(ParamSpec):
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: Condition | None = None
    hparam: bool = dataclasses.field(default=False, kw_only=True)

    kind: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        problems, knob = self._start()
        low = _number(self.low, f"{self.field}.low", problems, integer=True)
        high = _number(self.high, f"{self.field}.high", problems, integer=True)
        _check_log_flag(self, self.log, problems)
        step = _number(self.step, f"{self.field}.step", problems, integer=True)
        _check_range(self, low, high, self.log, problems)
        if step is not None:
            _check_step(self, low, high, step, self.log, problems)
            object.__setattr__(self, "step", step)
        for attr, value in (("low", low), ("high", high)):
            if value is not None:
                self._check_legal(knob, attr, value, problems)
                object.__setattr__(self, attr, value)
        self._raise(problems)

    def contains(self, value: object) -> bool:
        if not is_number(value) or not float(value).is_integer():
            return False
        return self.low <= value <= self.high and (int(value) - self.low) % self.step == 0

    def finite_values(self) -> tuple[Any, ...] | None:
        return tuple(range(self.low, self.high + 1, self.step))

    def bounds(self) -> tuple[float, float] | None:
        return self.low, self.high

    def domain_text(self) -> str:
        scale = ", log" if self.log else ""
        step = f", step {self.step}" if self.step != 1 else ""
        return f"an integer in [{self.low}, {self.high}]{scale}{step}"

    def suggest(self, trial: Any) -> int:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step != 1:
            data["step"] = self.step
        return data

    def narrowed(
        self, low: float | None, high: float | None, choices: Sequence[Any] | None
    ) -> ParamSpec | None:
        if choices is not None:
            return _choices_within(self, low, high, choices)
        return _narrow_stepped(self, low, high)


def _choices_within(
    param: ParamSpec, low: float | None, high: float | None, choices: Sequence[Any]
) -> ParamSpec | None:
    """The listed choices that `param` can take inside [low, high], as a categorical."""
    kept: list[Any] = []
    for choice in choices:
        if (
            param.contains(choice)
            and (low is None or choice >= low)
            and (high is None or choice <= high)
            and not any(same_value(choice, k) for k in kept)
        ):
            kept.append(choice)
    return CategoricalParam(param.name, tuple(kept), when=param.when, hparam=param.hparam) if kept else None


def _narrow_stepped(param: FloatParam | IntParam, low: float | None, high: float | None) -> ParamSpec | None:
    """Narrow a range with a step, staying on the same step grid (Optuna needs the divisibility)."""
    step = param.step if param.step is not None else 1
    first = 0 if low is None else max(0, math.ceil((low - param.low) / step - 1e-9))
    last = round((param.high - param.low) / step)
    if high is not None:
        last = min(last, math.floor((high - param.low) / step + 1e-9))
    if first > last:
        return None
    if isinstance(param, IntParam):
        return IntParam(
            param.name,
            param.low + first * step,
            param.low + last * step,
            log=param.log,
            step=step,
            when=param.when,
            hparam=param.hparam,
        )
    new_low, new_high = (float(f"{param.low + i * step:.12g}") for i in (first, last))
    return FloatParam(param.name, new_low, new_high, step=step, when=param.when, hparam=param.hparam)
