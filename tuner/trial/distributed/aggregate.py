"""One `TrialResult` from the results of all ranks.

- Status: `oom` if any rank ran out of memory; `failed` when a rank failed, died or hung
  (the reason names the rank and is the first failure seen: its peers' errors are only
  consequences); otherwise rank 0's `ok` or `pruned` (all ranks stop together).
- Throughput is global: each rank counted the items of all ranks per step, and the
  slowest rank's mean step time sets the pace.
- Memory is per rank: `peak_memory_bytes` is the maximum over ranks, the per-rank list is
  in `telemetry["per_rank"]`. Byte metrics (optimizer state, parameters held) are the
  maximum over ranks, `comm_share` the mean; `cpu_s_per_step` and `cpu_threads` the sum
  (per rank in `telemetry["per_rank"]`).
- NVML telemetry: every rank's line (`rank_row`, sent as `telemetry["nvml_rank"]`) goes
  into `telemetry["nvml_per_rank"]` with the worst rank (`per_rank_telemetry`); a CPU
  rank's line says it has none, which never changes the status. `telemetry["nvml"]`
  and the flat `gpu_*` metrics stay rank 0's (its samples are the time chart);
  `gpu_worst_rank` names the worst.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from tuner.hardware.telemetry_summary import per_rank_telemetry
from tuner.trial.distributed.supervise import RankState, Supervision
from tuner.types import TrialResult, TrialStatus

#: Rank metrics where the largest rank is what decides whether a config fits.
_MAX_METRICS = (
    "optimizer_state_bytes_per_rank",
    "param_bytes_per_rank_between_steps",
    "param_bytes_per_rank_after_forward",
    "first_step_s",
)
_MEAN_METRICS = ("comm_share", "comm_s", "comm_profiled_step_s", "comm_events", "eval_s")
#: Rank metrics whose trial total is the sum: the CPU seconds per step and the intra-op
#: threads of all ranks (what a multi-rank trial costs the machine, beside its wall time).
_SUM_METRICS = ("cpu_s_per_step", "cpu_threads")
_PER_RANK_KEYS = (
    "optimizer_state_bytes_per_rank", "param_bytes_per_rank_between_steps", "comm_share", "cpu_s_per_step", "cpu_threads",
)

_SIGKILL_HINT = " (on Linux, the kernel's out-of-memory killer ends processes this way)"


def combine(
    supervision: Supervision, *, item_unit: str, world_size: int, duration_s: float, notes: list[str]
) -> TrialResult:
    states = supervision.states
    results = [s.result for s in states if s.result is not None]
    base = next((s.result for s in states if s.rank == 0 and s.result is not None), None)
    if base is None:
        base = results[0] if results else TrialResult(status=TrialStatus.FAILED, item_unit=item_unit)
    status, reason = _status_and_reason(supervision)
    combined = dataclasses.replace(
        base,
        status=status,
        reason=reason,
        item_unit=item_unit,
        duration_s=duration_s,
        notes=tuple(dict.fromkeys([*notes, *(n for r in results for n in r.notes), *supervision.notes])),
    )
    combined = _with_rank_telemetry(combined, [s.result for s in states])
    if not results:
        return dataclasses.replace(combined, metrics={"world_size": float(world_size)})
    return _merge_measurements(combined, [s.result for s in states], world_size)


def _with_rank_telemetry(result: TrialResult, by_rank: list[TrialResult | None]) -> TrialResult:
    """`result` with the per-rank NVML table; `by_rank[r]` is None for a silent rank."""
    silent = {"available": False, "reason": "the rank's result has no NVML line", "samples": 0}
    rows = [(r.telemetry.get("nvml_rank") or silent) if r is not None else None for r in by_rank]
    table = per_rank_telemetry(rows)
    telemetry = {k: v for k, v in result.telemetry.items() if k != "nvml_rank"}
    telemetry["nvml_per_rank"] = table
    metrics = dict(result.metrics)
    if table["worst_rank"] is not None:
        metrics["gpu_worst_rank"] = float(table["worst_rank"])
    return dataclasses.replace(result, telemetry=telemetry, metrics=metrics)


def _status_and_reason(supervision: Supervision) -> tuple[TrialStatus, str | None]:
    states = supervision.states
    oom = next((s for s in states if s.result is not None and s.result.status is TrialStatus.OOM), None)
    if oom is not None:
        return TrialStatus.OOM, f"rank {oom.rank}: {oom.result.reason}"  # type: ignore[union-attr]
    if supervision.first_failure is not None:
        state = states[supervision.first_failure]
        return TrialStatus.FAILED, _failure_reason(state)
    if supervision.timeout is not None:
        return TrialStatus.FAILED, supervision.timeout
    rank0 = states[0].result
    assert rank0 is not None  # supervision ends only when all ranks finished or one failed
    return rank0.status, rank0.reason


def _failure_reason(state: RankState) -> str:
    if state.result is not None:
        return f"rank {state.rank}: {state.result.reason}"
    hint = _SIGKILL_HINT if state.death == "killed by SIGKILL" else ""
    return (
        f"rank {state.rank} died ({state.death}{hint}) after {state.steps_done} optimizer steps; "
        "the other ranks were stopped"
    )


def _merge_measurements(
    result: TrialResult, by_rank: list[TrialResult | None], world_size: int
) -> TrialResult:
    """`by_rank[r]` is rank r's result, None for a rank that sent none."""
    results = [r for r in by_rank if r is not None]
    step_times = [r.step_time_s for r in results if r.step_time_s is not None]
    slowest = max(step_times) if step_times else None
    items_per_step = result.metrics.get("items_per_optimizer_step")
    items_per_s = items_per_step / slowest if items_per_step and slowest else result.items_per_s
    mfu = result.mfu
    if mfu is not None and items_per_s and result.items_per_s:
        mfu *= items_per_s / result.items_per_s  # rank 0's MFU, re-paced by the slowest rank
    peaks = [r.peak_memory_bytes for r in results if r.peak_memory_bytes is not None]
    metrics: dict[str, float] = dict(result.metrics)
    for key in _MAX_METRICS:
        values = [r.metrics[key] for r in results if key in r.metrics]
        if values:
            metrics[key] = max(values)
    for key in _MEAN_METRICS:
        values = [r.metrics[key] for r in results if key in r.metrics]
        if values:
            metrics[key] = statistics.fmean(values)
    for key in _SUM_METRICS:
        values = [r.metrics[key] for r in results if key in r.metrics]
        if values:
            metrics[key] = sum(values)
    metrics["world_size"] = float(world_size)
    if peaks:
        metrics["peak_memory_bytes_per_rank"] = float(max(peaks))
    per_rank: dict[str, Any] = {
        "peak_memory_bytes": [r.peak_memory_bytes if r else None for r in by_rank],
        "step_time_s": [r.step_time_s if r else None for r in by_rank],
    }
    for key in _PER_RANK_KEYS:
        per_rank[key] = [r.metrics.get(key) if r else None for r in by_rank]
    return dataclasses.replace(
        result,
        items_per_s=items_per_s,
        step_time_s=slowest,
        peak_memory_bytes=max(peaks) if peaks else None,
        mfu=mfu,
        metrics=metrics,
        telemetry={**result.telemetry, "per_rank": per_rank},
    )
