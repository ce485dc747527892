"""The file form of one search-space parameter: `type` plus its keys, or a bare fixed value."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from tuner.errors import FieldProblem, SearchSpaceError
from tuner.space.params import BoolParam, CategoricalParam, FixedParam, ParamSpec
from tuner.space.ranges import FloatParam, IntParam

PARAM_TYPES: dict[str, type[ParamSpec]] = {
    cls.kind: cls for cls in (FloatParam, IntParam, CategoricalParam, BoolParam, FixedParam)
}
# Keys a file may give for each type, besides `type` and `when`.
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
    "bool": (),
    "fixed": ("value",),
}


def param_from_entry(name: str, entry: Any, *, hparam: bool = False) -> ParamSpec:
    """Build one parameter from its file entry (a mapping with `type`, or a bare fixed value);
    `hparam`: an entry of the `hparams:` section (a user hyperparameter, not a knob)."""
    if not isinstance(entry, Mapping):
        return FixedParam(name, entry, hparam=hparam)
    field = f"{'hparams' if hparam else 'params'}.{name}"
    problems: list[FieldProblem] = []
    kind = entry.get("type")
    if kind is None:
        guess = (
            "categorical"
            if "choices" in entry
            else "int or float"
            if "low" in entry
            else "one of " + ", ".join(PARAM_TYPES)
        )
        raise SearchSpaceError(FieldProblem(f"{field}.type", None, "is missing", f"add type: {guess}"))
    if kind not in PARAM_TYPES:
        raise SearchSpaceError(
            FieldProblem(
                f"{field}.type", kind, "is not a parameter type", "use one of: " + ", ".join(PARAM_TYPES)
            )
        )
    allowed = ("type", *PARAM_KEYS[kind], "when")
    for key in entry:
        if key not in allowed:
            guess = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            problems.append(
                FieldProblem(
                    f"{field}.{key}",
                    entry[key],
                    f"is not a key of a {kind} param",
                    f"{hint}allowed keys: " + ", ".join(allowed),
                )
            )
    required = [k for k in PARAM_KEYS[kind] if k in ("low", "high", "choices", "value")]
    for key in required:
        if key not in entry:
            problems.append(
                FieldProblem(f"{field}.{key}", None, "is missing", f"add {key}: ... to this {kind} param")
            )
    if any(p.value is None and p.problem == "is missing" for p in problems):
        raise SearchSpaceError(problems)  # cannot build it; the other checks would only repeat this
    kwargs = {k: entry[k] for k in (*PARAM_KEYS[kind], "when") if k in entry}
    try:
        param = PARAM_TYPES[kind](name, **kwargs, hparam=hparam)
    except SearchSpaceError as exc:
        problems += exc.problems
    if problems:
        raise SearchSpaceError(problems)
    return param
