"""The `replay` workload: answers trials from a measured table instead of training.

Search strategies can then be compared reproducibly, in milliseconds, on what real
hardware measured (e.g. the H200 tables in shared/data/h200). No torch is imported.
`replay_space(table)` is the search space of exactly the table's knob values.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, WorkloadError
from tuner.replay.table import TABLE_WARMUP_STEPS, ReplayTable, TableRow, load_table
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialConfig, TrialResult, TrialStatus
from tuner.workloads.base import Workload, WorkloadParam

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile
    from tuner.space.search_space import SearchSpace

NOT_IN_TABLE = "not in table"


class ReplayWorkload(Workload):
    name = "replay"
    description = "Answers each trial from a measured table (JSONL, format of shared/data/h200/README.md)"
    item_unit = "items"  # the table's meta decides: tokens for language models, samples otherwise
    # Nothing trains: a replayed trial cannot diverge, and replay studies compare search
    # strategies over the table's whole space, so quality knobs are not held.
    learns = False
    params = (
        WorkloadParam("table", "str", "", "path of the measured table (.jsonl)"),
        WorkloadParam(
            "hardware",
            "str",
            "",
            "hardware profile (tuner probe --json) of the machine that measured the table, for the "
            "memory model and MFU; default: the probe.json next to the table, if there is one",
        ),
    )

    def resolve_params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resolved = super().resolve_params(given)
        if not resolved["table"]:
            raise WorkloadError(
                FieldProblem("params.table", "", "is required", "give the path of a measured table, e.g. shared/data/h200/gpt_124m.jsonl")
            )
        load_table(resolved["table"])  # fail early, with the table's own problems
        return resolved

    def measured_on(self, params: Mapping[str, Any]) -> HardwareProfile | None:
        return _table_machine(params)

    def table(self, params: Mapping[str, Any]) -> ReplayTable:
        return load_table(params["table"])

    def shape(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.table(params).shape

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The table's first measured config: a baseline that is sure to be in the table."""
        table = self.table(params)
        return table.config_of(table.rows[0])

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        # `request.peak_flops` (this machine's) is ignored: the table's TFLOP/s were measured
        # on the table's machine, so its MFU is against that machine's profile (param
        # `hardware`).
        machine = _table_machine(request.params)
        config = request.config
        peak_tflops = machine.peak_tflops.get(config.precision) if machine is not None else None
        return replay_result(load_table(request.params["table"]), config, peak_tflops=peak_tflops)


def _table_machine(resolved: Mapping[str, Any]) -> HardwareProfile | None:
    """The profile of the table's machine: param `hardware`, else a `probe.json` beside
    the table (how shared/data/h200 ships its tables); None when there is neither."""
    if resolved["hardware"]:
        path = Path(resolved["hardware"])
    else:
        path = Path(resolved["table"]).with_name("probe.json")
        if not path.is_file():
            return None
    stat = path.stat()  # a profile rewritten in place is read again
    return _profile_at(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _profile_at(path: str, mtime_ns: int, size: int) -> HardwareProfile:
    """Every replayed trial asks for the table machine's peaks: read its profile once."""
    from tuner.hardware.profile import load_profile

    return load_profile(path)


def replay_result(table: ReplayTable, config: TrialConfig, *, peak_tflops: float | None = None) -> TrialResult:
    """What the table says `config` did."""
    row = table.find(config)
    unit = table.item_unit
    if row is None:
        varied = {k: getattr(config, k) for k in table.knob_names}
        return TrialResult(
            status=TrialStatus.FAILED,
            item_unit=unit,
            reason=f"{NOT_IN_TABLE}: {table.path} has no measurement of {varied} with the other knobs at their defaults",
        )
    note = f"replayed from {table.path}:{row.line}"
    if row.status == "oom":
        return TrialResult(
            status=TrialStatus.OOM,
            item_unit=unit,
            peak_memory_bytes=row.peak_alloc_bytes,
            memory_kind="replay_table",
            reason="CUDA out of memory (as measured)",
            notes=(note,),
        )
    if row.status != "ok":
        return TrialResult(
            status=TrialStatus.FAILED,
            item_unit=unit,
            reason=f"the table records status {row.status!r} for this config",
            notes=(note,),
        )
    return _ok_result(row, unit, note, peak_tflops)


def _ok_result(row: TableRow, unit: str, note: str, peak_tflops: float | None) -> TrialResult:
    timed = int(row.steps_timed or 0)
    duration = (row.warmup_s or 0.0) + (row.step_s or 0.0) * timed
    mfu = row.tflops / peak_tflops if row.tflops and peak_tflops else None
    metrics = {k: float(v) for k, v in (("tflops", row.tflops), ("peak_reserved_bytes", row.peak_reserved_bytes)) if v is not None}
    return TrialResult(
        status=TrialStatus.OK,
        items_per_s=row.items_per_s,
        item_unit=unit,
        step_time_s=row.step_s,
        timed_steps=timed,
        warmup_steps=TABLE_WARMUP_STEPS,
        steps_run=TABLE_WARMUP_STEPS + timed,
        peak_memory_bytes=row.peak_alloc_bytes,
        memory_kind="replay_table",
        mfu=mfu,
        duration_s=duration or None,
        metrics=metrics,
        notes=(note,),
    )


def replay_space(table: ReplayTable) -> SearchSpace:
    """The search space of exactly the table's knob values (one categorical per varied knob).

    Knobs the table does not vary are left out, so they keep their default, the value they
    were measured at.
    """
    from tuner.space.params import BoolParam, CategoricalParam
    from tuner.space.search_space import SearchSpace

    params = []
    for name in table.knob_names:
        values = table.knob_values(name)
        if set(values) == {False, True}:
            params.append(BoolParam(name))
        else:
            params.append(CategoricalParam(name, tuple(values)))
    name = f"replay-{table.workload}".replace("_", "-")
    return SearchSpace(name=name, description=f"knob values measured in {table.path}", params=tuple(params))
