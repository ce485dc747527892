"""What a StudySpec must hold when its space is `kind: inference` (and must not otherwise):
inference objectives, an SLO, a target rate for `p99_at_qps`."""

from __future__ import annotations

from typing import Any

from tuner.errors import FieldProblem
from tuner.inference.objectives import INFERENCE_OBJECTIVES

DEFAULT_SLO_P99_MS = 50.0


def is_inference(space: Any) -> bool:
    return getattr(space, "kind", "training") == "inference"


def inference_spec_problems(
    space: Any, objectives: tuple[str, ...], slo_p99_ms: Any, target_qps: Any
) -> list[FieldProblem]:
    problems = []
    inference = is_inference(space)
    for objective in objectives:
        if inference and objective not in INFERENCE_OBJECTIVES:
            problems.append(
                FieldProblem(
                    "objectives",
                    objective,
                    "is a training objective; the space is kind: inference",
                    "use qps_at_slo, p99_at_qps or both (the Pareto front)",
                )
            )
        if not inference and objective in INFERENCE_OBJECTIVES:
            problems.append(
                FieldProblem(
                    "objectives",
                    objective,
                    "is an inference objective",
                    "tune a kind: inference space, or use throughput / val_loss",
                )
            )
    for name, value in (("slo_p99_ms", slo_p99_ms), ("target_qps", target_qps)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(FieldProblem(name, value, "must be a number > 0", f"e.g. {name}: 50"))
        elif not inference:
            problems.append(FieldProblem(name, value, "applies to inference studies only", f"remove {name}"))
    if inference and "p99_at_qps" in objectives and target_qps is None:
        problems.append(
            FieldProblem(
                "target_qps",
                None,
                "is needed by the objective p99_at_qps",
                "give the fixed rate, e.g. target_qps: 2000",
            )
        )
    return problems
