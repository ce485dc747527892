"""A space's `kind`: what its trials are, `training` (the default) or `inference`.

The kind picks the knob catalogue the parameters must come from (`tuner.knobs.KNOBS` or
`tuner.inference.knobs.INFERENCE_KNOBS`) and the study that runs the space
(docs/inference.md). Both catalogues share the params namespace; their names differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tuner.errors import FieldProblem
from tuner.inference.knobs import INFERENCE_KNOBS
from tuner.knobs import KNOBS

SPACE_KINDS: tuple[str, ...] = ("training", "inference")


def kind_problems(kind: Any, param_names: Iterable[str], free_knobs: Iterable[str]) -> list[FieldProblem]:
    if kind not in SPACE_KINDS:
        return [
            FieldProblem(
                "kind", kind, "is not a space kind", "use kind: training (default) or kind: inference"
            )
        ]
    problems = []
    for name in param_names:
        if kind == "inference" and name in KNOBS and name not in INFERENCE_KNOBS:
            problems.append(
                FieldProblem(
                    f"params.{name}",
                    name,
                    "is a training knob, not a serving knob",
                    "in a kind: inference space use: " + ", ".join(INFERENCE_KNOBS),
                )
            )
        if kind == "training" and name in INFERENCE_KNOBS:
            problems.append(
                FieldProblem(
                    f"params.{name}",
                    name,
                    "is a serving knob",
                    "add kind: inference at the top of the space, or use training knobs only",
                )
            )
    if kind == "inference" and list(free_knobs):
        problems.append(
            FieldProblem(
                "free_knobs", list(free_knobs), "applies to training spaces only", "remove free_knobs"
            )
        )
    return problems
