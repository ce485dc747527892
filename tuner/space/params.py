"""Parameter kinds of a search space: the base class and the discrete kinds.

Each parameter is a knob from `tuner.knobs.KNOBS`, or (with `hparam=True`, the space's
`hparams:` section) a hyperparameter of the user's own, of any identifier name: the same
kinds and checks, minus the knob's legal range. A parameter validates itself when built
(types, bounds, legality for its knob) and raises a `SearchSpaceError` listing every
problem; ranges (float, int) live in `tuner.space.ranges`, checks across parameters
(conditions, cycles) in `tuner.space.validation`, the file form in `tuner.space.schema`.
"""

from __future__ import annotations

import dataclasses
import keyword
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tuner.errors import FieldProblem, SearchSpaceError
from tuner.inference.knobs import INFERENCE_KNOBS, closest_inference_knob
from tuner.knobs import KNOBS, Knob, closest_knob
from tuner.space.conditions import Condition, is_number, is_scalar, parse_condition, same_value

# Which parameter kinds can drive a knob of each kind (an int range is fine for a float knob).
_KINDS_FOR_KNOB: dict[str, tuple[str, ...]] = {
    "int": ("int", "categorical", "fixed"),
    "float": ("float", "int", "categorical", "fixed"),
    "categorical": ("categorical", "fixed"),
    "bool": ("bool", "categorical", "fixed"),
}


def unknown_knob_fix(name: object) -> str:
    guess = (closest_knob(name) or closest_inference_knob(name)) if isinstance(name, str) else None
    if guess:
        return f"did you mean {guess!r}?"
    return "use one of: " + ", ".join(KNOBS)


class ParamSpec:
    """Base of the parameter kinds. Subclasses are frozen dataclasses with `name` and `when`.

    `when` may be given as a `Condition` or in its file form (`{"precision": "fp16"}`).
    """

    kind: ClassVar[str]
    name: str
    when: Condition | None
    #: True for a user hyperparameter (the space's `hparams:` section): any identifier,
    #: never applied to TrialConfig, handed to the trial as is (docs/search-spaces.md).
    hparam: bool

    @property
    def section(self) -> str:
        return "hparams" if self.hparam else "params"

    @property
    def field(self) -> str:
        return f"{self.section}.{self.name}"

    # -- building ---------------------------------------------------------------------------
    def _start(self) -> tuple[list[FieldProblem], Knob | None]:
        """Common checks: the name is a knob of a compatible kind, and `when` parses."""
        problems: list[FieldProblem] = []
        if self.hparam:
            problems += hparam_name_problems(self.name, self.field)
            knob = None  # a user hyperparameter has no knob's legal range
        else:
            knob = (KNOBS.get(self.name) or INFERENCE_KNOBS.get(self.name)) if isinstance(self.name, str) else None
        if self.hparam:
            pass  # the name's problems are reported above
        elif knob is None:
            fix = unknown_knob_fix(self.name)
            if isinstance(self.name, str) and closest_knob(self.name) is None:
                fix = f"your own hyperparameter? put it under hparams; or, for a knob, {fix}"
            problems.append(FieldProblem(self.field, self.name, "is not a knob", fix))
        elif self.kind not in _KINDS_FOR_KNOB[knob.kind]:
            allowed = ", ".join(_KINDS_FOR_KNOB[knob.kind])
            problems.append(
                FieldProblem(
                    f"{self.field}.type",
                    self.kind,
                    f"cannot drive {self.name}, a {knob.kind} knob",
                    f"use type: {allowed}",
                )
            )
            knob = None  # the bounds of a wrong kind would only add noise
        if self.when is not None and not isinstance(self.when, Condition):
            condition, when_problems = parse_condition(self.when, field=f"{self.field}.when")
            problems += when_problems
            object.__setattr__(self, "when", condition)
        return problems, knob

    def _check_legal(self, knob: Knob | None, attr: str, value: object, problems: list[FieldProblem]) -> None:
        why = knob.check(value) if knob else None
        if why:
            problems.append(
                FieldProblem(
                    f"{self.field}.{attr}",
                    value,
                    f"{why} for knob {self.name}",
                    f"use {knob.legal_range_text()}",
                )
            )

    @staticmethod
    def _raise(problems: list[FieldProblem]) -> None:
        if problems:
            raise SearchSpaceError(problems)

    # -- what every kind answers ---------------------------------------------------------------
    def contains(self, value: object) -> bool:
        """Whether `value` is one this parameter can take."""
        raise NotImplementedError

    def finite_values(self) -> tuple[Any, ...] | None:
        """Every value in order, or None for a continuous range (a float without step)."""
        raise NotImplementedError

    def bounds(self) -> tuple[float, float] | None:
        """(min, max) of a numeric domain, or None when some value is not a number."""
        values = self.finite_values()
        if values is None or not all(is_number(v) for v in values):
            return None
        return min(values), max(values)

    def domain_text(self) -> str:
        values = self.finite_values()
        return "one of " + ", ".join(repr(v) for v in values) if values is not None else ""

    def suggest(self, trial: Any) -> Any:
        raise NotImplementedError

    def distribution(self) -> Any:
        """The Optuna distribution (optuna is imported here, never at module level)."""
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> Any:
        data = self.body()
        if self.when is not None:
            data["when"] = self.when.to_dict()
        return data

    def narrowed(
        self, low: float | None, high: float | None, choices: Sequence[Any] | None
    ) -> ParamSpec | None:
        """A copy limited to [low, high] and `choices`, or None when nothing is left."""
        values = self.finite_values()
        assert values is not None  # continuous kinds override this
        kept = [
            v
            for v in values
            if (choices is None or any(same_value(v, c) for c in choices))
            and (low is None or (is_number(v) and v >= low))
            and (high is None or (is_number(v) and v <= high))
        ]
        if not kept:
            return None
        if len(kept) == len(values):
            return self
        return CategoricalParam(self.name, tuple(kept), when=self.when, hparam=self.hparam)


def hparam_name_problems(name: object, field_name: str) -> list[FieldProblem]:
    """Problems of a name in `hparams:`: an identifier that is not a knob's name."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or len(name) > 64:
        return [
            FieldProblem(
                field_name,
                name,
                "is not a hyperparameter name",
                "use a Python identifier of up to 64 characters, e.g. dropout or n_layers",
            )
        ]
    if name in KNOBS:
        return [
            FieldProblem(
                field_name,
                name,
                f"is a knob ({KNOBS[name].help}), which tuner applies itself",
                f"put it under params: params: {{{name}: ...}}",
            )
        ]
    return []


@dataclass(frozen=True)
class CategoricalParam(ParamSpec):
    name: str
    choices: tuple[Any, ...]
    when: Condition | None = None
    hparam: bool = dataclasses.field(default=False, kw_only=True)

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        problems, knob = self._start()
        field = f"{self.field}.choices"
        if not isinstance(self.choices, (list, tuple)) or not self.choices:
            problems.append(
                FieldProblem(
                    field, self.choices, "must be a non-empty list", "write e.g. choices: [fp32, bf16]"
                )
            )
        else:
            object.__setattr__(self, "choices", tuple(self.choices))
            for i, choice in enumerate(self.choices):
                if not is_scalar(choice):
                    problems.append(
                        FieldProblem(
                            f"{field}[{i}]",
                            choice,
                            "must be a plain value",
                            "use strings, numbers or booleans",
                        )
                    )
                elif any(same_value(choice, earlier) for earlier in self.choices[:i]):
                    problems.append(
                        FieldProblem(f"{field}[{i}]", choice, "is listed twice", "list each choice once")
                    )
                else:
                    self._check_legal(knob, f"choices[{i}]", choice, problems)
        self._raise(problems)

    def contains(self, value: object) -> bool:
        return any(same_value(value, c) for c in self.choices)

    def finite_values(self) -> tuple[Any, ...] | None:
        return self.choices

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def body(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class BoolParam(ParamSpec):
    name: str
    when: Condition | None = None
    hparam: bool = dataclasses.field(default=False, kw_only=True)

    kind: ClassVar[str] = "bool"

    def __post_init__(self) -> None:
        problems, _ = self._start()
        self._raise(problems)

    def contains(self, value: object) -> bool:
        return isinstance(value, bool)

    def finite_values(self) -> tuple[Any, ...] | None:
        return (False, True)

    def suggest(self, trial: Any) -> bool:
        return trial.suggest_categorical(self.name, [False, True])

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution((False, True))

    def body(self) -> dict[str, Any]:
        return {"type": "bool"}


@dataclass(frozen=True)
class FixedParam(ParamSpec):
    """A knob held at one value: part of every config, never sampled."""

    name: str
    value: Any
    when: Condition | None = None
    hparam: bool = dataclasses.field(default=False, kw_only=True)

    kind: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        problems, knob = self._start()
        if not is_scalar(self.value) or self.value is None:
            problems.append(
                FieldProblem(
                    self.field,
                    self.value,
                    "is not a knob value",
                    "a bare value fixes the knob; for a search write {type: categorical, choices: [...]}",
                )
            )
        else:
            self._check_legal(knob, "value", self.value, problems)
        self._raise(problems)

    def contains(self, value: object) -> bool:
        return same_value(value, self.value)

    def finite_values(self) -> tuple[Any, ...] | None:
        return (self.value,)

    def suggest(self, trial: Any) -> Any:
        return self.value

    def distribution(self) -> Any:
        return None  # nothing to sample

    def body(self) -> dict[str, Any]:
        return {"type": "fixed", "value": self.value}

    def to_dict(self) -> Any:
        return self.value if self.when is None else super().to_dict()

    def narrowed(
        self, low: float | None, high: float | None, choices: Sequence[Any] | None
    ) -> ParamSpec | None:
        return self if super().narrowed(low, high, choices) is not None else None
