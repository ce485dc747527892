"""Objectives of any name: `"val_acc:max"`, `"latency_ms:min"`, or a built-in name.

A study's objective is written `NAME` for a built-in objective (the table
`tuner.study.spec.OBJECTIVES`, e.g. `throughput`, which keeps its known direction) or
`NAME:DIRECTION` for any other (`max`/`maximize`, `min`/`minimize`). The stored form is
canonical: a built-in name bare, any other `name:max` or `name:min`, so every function
handed a study's objectives can tell each one's name and direction without the spec.

The built-in table is passed in by the caller (`tuner.study.spec` owns it), so this
module imports nothing of the study package. A user objective's value lives in the
trial result's `metrics` under its name (ask/tell studies put the told value there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tuner.errors import FieldProblem

#: an objective's name: an identifier-like word (it becomes a metric key and an axis label)
OBJECTIVE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
#: the directions a user objective may give, and what each means
DIRECTION_WORDS: dict[str, str] = {
    "max": "maximize",
    "maximize": "maximize",
    "min": "minimize",
    "minimize": "minimize",
}
_SHORT = {"maximize": "max", "minimize": "min"}


def objective_name(objective: str) -> str:
    """`val_acc:max` -> `val_acc`; a built-in name is its own name."""
    return objective.split(":", 1)[0]


def objective_direction(objective: str, builtin: Mapping[str, str]) -> str:
    """`maximize` or `minimize` of a canonical objective (see the module docstring)."""
    name, _, direction = objective.partition(":")
    if direction:
        return DIRECTION_WORDS[direction]
    return builtin[name]


def canonical_objectives(
    objectives: Sequence[object], builtin: Mapping[str, str], field: str = "objectives"
) -> tuple[tuple[str, ...], list[FieldProblem]]:
    """The canonical form of each objective and the problems found (none when all parse)."""
    canonical: list[str] = []
    problems: list[FieldProblem] = []
    known = ", ".join(builtin)
    for objective in objectives:
        where = field  # the entry is named by its value
        if not isinstance(objective, str):
            problems.append(FieldProblem(where, objective, "is not an objective", 'write "NAME:max" or "NAME:min", or one of: ' + known))
            continue
        name, colon, direction = objective.strip().partition(":")
        name, direction = name.strip(), direction.strip().lower()
        if not OBJECTIVE_NAME_RE.match(name):
            problems.append(
                FieldProblem(where, objective, "has no valid objective name", 'use letters, digits and "_", e.g. "val_acc:max"')
            )
            continue
        if colon and direction not in DIRECTION_WORDS:
            problems.append(
                FieldProblem(
                    where,
                    objective,
                    f"has an unknown direction {direction!r}",
                    f'write "{name}:max" to maximize it or "{name}:min" to minimize it',
                )
            )
            continue
        if name in builtin:
            if colon and DIRECTION_WORDS[direction] != builtin[name]:
                problems.append(
                    FieldProblem(
                        where,
                        objective,
                        f"contradicts the built-in direction of {name} ({builtin[name]})",
                        f'write "{name}" (its direction is known), or name your own metric differently',
                    )
                )
                continue
            canonical.append(name)
        elif not colon:
            problems.append(
                FieldProblem(
                    where,
                    objective,
                    "is not a built-in objective, so it needs a direction",
                    f'write "{name}:max" or "{name}:min" (built-in names: {known})',
                )
            )
        else:
            canonical.append(f"{name}:{_SHORT[DIRECTION_WORDS[direction]]}")
    names = [objective_name(o) for o in canonical]
    if len(set(names)) != len(names):
        problems.append(FieldProblem(field, list(objectives), "repeats an objective", "list each once"))
    return tuple(canonical), problems


def user_objective_values(objectives: Sequence[str], by_name: Mapping[str, float]) -> dict[str, float]:
    """The told values of the user objectives among `objectives` (canonical), by name: what
    a trial result keeps in `metrics` so best/Pareto/exports read them back."""
    return {objective_name(o): float(by_name[objective_name(o)]) for o in objectives if ":" in o and objective_name(o) in by_name}


__all__ = [
    "DIRECTION_WORDS",
    "OBJECTIVE_NAME_RE",
    "canonical_objectives",
    "user_objective_values",
    "objective_direction",
    "objective_name",
]
