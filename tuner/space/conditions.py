"""Conditions (`when:`) that make a search-space parameter active only for some values of others.

File forms, several keys meaning "all must hold":

    when: {precision: fp16}                 # ==
    when: {precision: [fp16, bf16]}         # in
    when: {world_size: {">": 1}}            # one of == != > >= < <= in
    when: {sharding_stage: {">=": 1, "<=": 2}}

A clause on a parameter that is inactive (absent from the values) is false, so a chain
`c when b`, `b when a` switches `c` off whenever `b` is off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.errors import FieldProblem, SearchSpaceError

ORDER_OPS: tuple[str, ...] = (">", ">=", "<", "<=")
OPS: tuple[str, ...] = ("==", "!=", *ORDER_OPS, "in")


def is_number(value: object) -> bool:
    """A real number, not a bool (YAML `true` must not pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same_value(a: object, b: object) -> bool:
    """Equality that keeps bools apart from numbers (`True == 1` in Python, not in a space)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Clause:
    """`param <op> value`; for `in`, value is a tuple of allowed values."""

    param: str
    op: str
    value: Any

    def holds(self, values: Mapping[str, Any]) -> bool:
        if self.param not in values:
            return False
        return self.holds_for(values[self.param])

    def holds_for(self, actual: Any) -> bool:
        """Whether the clause holds when its parameter has the value `actual`."""
        if self.op == "==":
            return same_value(actual, self.value)
        if self.op == "!=":
            return not same_value(actual, self.value)
        if self.op == "in":
            return any(same_value(actual, v) for v in self.value)
        if not (is_number(actual) and is_number(self.value)):
            return False  # ordering a string or bool never holds (validation rejects it up front)
        if self.op == ">":
            return actual > self.value
        if self.op == ">=":
            return actual >= self.value
        if self.op == "<":
            return actual < self.value
        return actual <= self.value

    def text(self) -> str:
        return f"{self.param} {self.op} {list(self.value) if self.op == 'in' else self.value!r}"


@dataclass(frozen=True)
class Condition:
    """All clauses must hold. Build from the file form with `Condition.from_dict`."""

    clauses: tuple[Clause, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "clauses", tuple(self.clauses))

    def holds(self, values: Mapping[str, Any]) -> bool:
        """True when every clause holds; False when a referenced parameter is absent (inactive)."""
        return all(clause.holds(values) for clause in self.clauses)

    @property
    def params(self) -> tuple[str, ...]:
        """Referenced parameter names, each once, in order."""
        return tuple(dict.fromkeys(c.param for c in self.clauses))

    def text(self) -> str:
        return " and ".join(c.text() for c in self.clauses)

    def to_dict(self) -> dict[str, Any]:
        """The shortest file form: bare value for a lone ==, a list for a lone in."""
        by_param: dict[str, list[Clause]] = {}
        for clause in self.clauses:
            by_param.setdefault(clause.param, []).append(clause)
        out: dict[str, Any] = {}
        for param, clauses in by_param.items():
            if len(clauses) == 1 and clauses[0].op == "==":
                out[param] = clauses[0].value
            elif len(clauses) == 1 and clauses[0].op == "in":
                out[param] = list(clauses[0].value)
            else:
                out[param] = {c.op: list(c.value) if c.op == "in" else c.value for c in clauses}
        return out

    @classmethod
    def from_dict(cls, data: Any, *, field: str = "when", source: str | None = None) -> Condition:
        condition, problems = parse_condition(data, field=field, source=source)
        if problems or condition is None:
            raise SearchSpaceError(problems)
        return condition

    @classmethod
    def of(cls, clauses: Iterable[Clause]) -> Condition:
        return cls(tuple(clauses))


def parse_condition(
    data: Any, *, field: str = "when", source: str | None = None
) -> tuple[Condition | None, list[FieldProblem]]:
    """Parse the file form; return the condition (None when broken) and every problem found."""
    if isinstance(data, Condition):
        return data, []
    if not isinstance(data, Mapping) or not data:
        return None, [
            FieldProblem(
                field,
                data,
                "must be a non-empty mapping of parameter -> value",
                'write e.g. when: {precision: fp16} or when: {world_size: {">": 1}}',
                source,
            )
        ]
    clauses: list[Clause] = []
    problems: list[FieldProblem] = []
    for param, spec in data.items():
        where = f"{field}.{param}"
        if not isinstance(param, str):
            problems.append(FieldProblem(where, param, "must be a parameter name", "use a knob name", source))
            continue
        if isinstance(spec, Mapping):
            if not spec:
                problems.append(
                    FieldProblem(
                        where,
                        {},
                        "has no operator",
                        'write e.g. {">": 1}; operators: ' + " ".join(OPS),
                        source,
                    )
                )
            for op, value in spec.items():
                clause, problem = _clause(param, op, value, f"{where}.{op}", source)
                if clause:
                    clauses.append(clause)
                if problem:
                    problems.append(problem)
        elif isinstance(spec, (list, tuple)):
            clause, problem = _clause(param, "in", spec, where, source)
            if clause:
                clauses.append(clause)
            if problem:
                problems.append(problem)
        else:
            clause, problem = _clause(param, "==", spec, where, source)
            if clause:
                clauses.append(clause)
            if problem:
                problems.append(problem)
    if problems:
        return None, problems
    return Condition(tuple(clauses)), []


def _clause(
    param: str, op: Any, value: Any, field: str, source: str | None
) -> tuple[Clause | None, FieldProblem | None]:
    if op not in OPS:
        return None, FieldProblem(
            field,
            op,
            "is not a condition operator",
            "use one of: " + " ".join(OPS) + " (quote them in YAML)",
            source,
        )
    if op == "in":
        if not isinstance(value, (list, tuple)) or not value:
            return None, FieldProblem(
                field, value, "must be a non-empty list", "write e.g. [fp16, bf16]", source
            )
        if not all(is_scalar(v) for v in value):
            return None, FieldProblem(
                field, value, "must list plain values", "use strings, numbers or booleans", source
            )
        return Clause(param, "in", tuple(value)), None
    if not is_scalar(value):
        return None, FieldProblem(
            field,
            value,
            "must be a plain value",
            "use a string, number or boolean (a list means 'in')",
            source,
        )
    if op in ORDER_OPS and not (is_number(value) and math.isfinite(value)):
        return None, FieldProblem(
            field, value, f"'{op}' needs a finite number", f'write e.g. {{"{op}": 1}}', source
        )
    return Clause(param, op, value), None
