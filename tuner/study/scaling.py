"""Scaling efficiency: one config of a study measured at world sizes 1, 2, 4...

`measure_scaling` takes a study's trial (its best by default), runs the same config with
`world_size` = each of `world_sizes` through an executor (local, or Ray across nodes),
one after the other so the runs do not share devices, and reports per size:

- speedup = throughput(N) / throughput(1), throughput in the workload's items/s over all
  ranks;
- efficiency = speedup / N (the guide's 2.8x on 4 GPUs is 70 %).

This is weak scaling, as data-parallel training scales: the per-rank micro batch stays
the config's, so N ranks process N times the items per optimizer step. The report is
stored with the study (study user attr `tuner.scaling`) and returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.study.attrs import StudyAttr
from tuner.trial_request import TrialRequest
from tuner.types import TrialBudget, TrialResult, TrialStatus

if TYPE_CHECKING:
    from tuner.executors.base import Executor

DEFAULT_WORLD_SIZES: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class ScalingPoint:
    """One world size: what it measured and how it compares with world size 1."""

    world_size: int
    status: str
    items_per_s: float | None
    speedup: float | None
    efficiency: float | None
    nodes: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class ScalingReport:
    study: str
    trial_number: int
    item_unit: str
    config: Mapping[str, Any]
    points: tuple[ScalingPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "trial_number": self.trial_number,
            "item_unit": self.item_unit,
            "config": dict(self.config),
            "points": [dataclasses.asdict(p) for p in self.points],
        }


def check_world_sizes(sizes: Sequence[int], field: str = "--world-sizes") -> tuple[int, ...]:
    """Distinct integers >= 1, including 1 (the reference every speedup is measured against)."""
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) or 1 not in sizes:
        raise ValidationError(
            FieldProblem(field, list(sizes), "must be integers >= 1 and include 1 (the reference)", "e.g. 1,2,4")
        )
    return tuple(sorted(set(sizes)))


def scaling_points(results: Mapping[int, TrialResult]) -> tuple[ScalingPoint, ...]:
    """Speedup and efficiency of each world size against world size 1 (None where either failed)."""
    reference = results.get(1)
    base = reference.items_per_s if reference is not None and reference.status is TrialStatus.OK else None
    points = []
    for size in sorted(results):
        result = results[size]
        ok = result.status is TrialStatus.OK and result.items_per_s
        speedup = result.items_per_s / base if ok and base else None  # type: ignore[operator]
        nodes = tuple(dict.fromkeys(str(n.get("node_ip")) for n in result.telemetry.get("nodes", [])))
        points.append(
            ScalingPoint(
                world_size=size,
                status=result.status.value,
                items_per_s=result.items_per_s if ok else None,
                speedup=speedup,
                efficiency=speedup / size if speedup is not None else None,
                nodes=nodes,
                reason=result.reason,
            )
        )
    return tuple(points)


def measure_scaling(
    storage: str | None,
    study_name: str,
    executor: Executor,
    *,
    world_sizes: Sequence[int] = DEFAULT_WORLD_SIZES,
    trial_number: int | None = None,
    budget: TrialBudget | None = None,
    device: str | None = None,
) -> ScalingReport:
    """Measure the study's trial (best by default) at each world size; store and return the report."""
    from tuner.study.results import best_record, load_optuna_study, records_of, study_spec
    from tuner.workloads import get_workload

    sizes = check_world_sizes(world_sizes)
    study = load_optuna_study(storage, study_name)
    spec = study_spec(study)
    if spec is None:
        raise ValidationError(
            FieldProblem("--study", study_name, "was not created by tuner (no tuner.spec)", "create it with `tuner tune`")
        )
    records = records_of(study)
    if trial_number is None:
        record = best_record(records, spec.objectives)
    else:
        record = next((r for r in records if r.number == trial_number), None)
    if record is None or record.config is None:
        raise ValidationError(
            FieldProblem(
                "--trial",
                trial_number,
                f"study {study_name!r} has no such trial with a config" if trial_number is not None
                else f"study {study_name!r} has no completed trial to scale",
                "run trials first, or pass --trial N of a trial with a config",
            )
        )
    workload = get_workload(spec.workload)
    params = workload.resolve_params(spec.workload_params)
    results: dict[int, TrialResult] = {}
    for size in sizes:
        config = record.config.replace(world_size=size)
        if size == 1 and config.sharding_stage > 0:
            config = config.replace(sharding_stage=0)  # one process has nothing to shard
        request = TrialRequest(
            trial_number=record.number,
            workload=spec.workload,
            params=params,
            config=config,
            budget=budget or spec.budget,
            seed=spec.seed,
            device=device or spec.device,
        )
        results[size] = executor.submit(request).result()
    report = ScalingReport(
        study=study_name,
        trial_number=record.number,
        item_unit=workload.item_unit,
        config=record.config.to_dict(),
        points=scaling_points(results),
    )
    study.set_user_attr(StudyAttr.SCALING, report.to_dict())
    return report


def scaling_table(report: ScalingReport) -> str:
    """The report as the lines `tuner scaling` prints."""
    lines = [
        f"scaling of study {report.study}, trial #{report.trial_number} (weak scaling: per-rank micro batch fixed)",
        f"  {'world':>5}  {report.item_unit + '/s':>14}  {'speedup':>8}  {'efficiency':>10}  nodes / reason",
    ]
    for p in report.points:
        rate = f"{p.items_per_s:,.0f}" if p.items_per_s is not None else "-"
        speedup = f"x{p.speedup:.2f}" if p.speedup is not None else "-"
        efficiency = f"{p.efficiency * 100:.0f}%" if p.efficiency is not None else "-"
        where = ", ".join(p.nodes) if p.status == "ok" else f"{p.status}: {(p.reason or '')[:120]}"
        lines.append(f"  {p.world_size:>5}  {rate:>14}  {speedup:>8}  {efficiency:>10}  {where}")
    return "\n".join(lines)
