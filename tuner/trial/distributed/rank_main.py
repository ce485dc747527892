"""The entry point of one rank process of a multi-process trial.

Protocol over the rank's pipe to the launching process:

    rank -> parent   ("step", rank, steps_done)        after every optimizer step (liveness)
                     ("report", steps_done, loss)      rank 0 only, every `report_every` steps;
                                                       answered by ("prune", bool)
                     ("result", rank, TrialResult)     exactly once, at the end (pickled
                                                       as is: to_dict would turn a diverged
                                                       loss's NaN into None)

The result of a rank is built by the same guard as a single-process trial, so an
out-of-memory on a rank arrives as an `oom` result, not as a dead process.

Every CUDA rank samples its own GPU through NVML while it trains, as a single-process
trial does; its result carries the record (`telemetry["nvml"]`) and its line of the
trial's per-rank table (`telemetry["nvml_rank"]`, `rank_row`). A CPU rank's line says
why it has none; a rank's telemetry never fails it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from tuner.hardware.telemetry import TelemetrySampler, telemetry_for_device
from tuner.hardware.telemetry_summary import CPU_RANK_REASON, rank_row, summary_metrics, telemetry_record
from tuner.trial.distributed.launch import detach_and_die_with_parent
from tuner.trial.distributed.rank_loop import RankTraining
from tuner.trial.distributed.rank_spec import RankChannel, RankSpec, process_group_backend
from tuner.trial.guard import run_guarded
from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.precision import precision_plan
from tuner.trial.progress import TrialProgress
from tuner.trial.timing import StepTimer
from tuner.types import TrialResult


def rank_main(rank: int, spec: RankSpec, conn: Connection) -> None:
    """Run one rank to the end and send its result; never raises."""
    detach_and_die_with_parent(spec.owner_pid)
    channel = RankChannel(conn, rank)
    result = execute_rank(rank, spec, channel)
    try:
        channel.send_result(result)
    except (BrokenPipeError, EOFError, OSError):
        os._exit(4)  # the launching process is gone; nothing left to report to
    finally:
        if dist.is_initialized():
            # No barrier here: a peer may be dead, and this process exits right after.
            dist.destroy_process_group()


def execute_rank(rank: int, spec: RankSpec, channel: RankChannel) -> TrialResult:
    """Train one rank to the end and return its result (a forked rank or a Ray actor); never raises."""
    started = time.perf_counter()
    for name, value in spec.comm_env:
        os.environ[name] = value  # read by NCCL/gloo when the process group starts
    index = rank if spec.device_index is None else spec.device_index
    device = torch.device("cuda", index) if spec.device_type == "cuda" else torch.device("cpu")
    progress = TrialProgress(
        item_unit=spec.workload.item_unit,
        timer=StepTimer(
            warmup_steps=spec.request.budget.warmup_steps, max_seconds=spec.request.budget.max_seconds
        ),
    )
    sampler: TelemetrySampler | None = None
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif spec.cpu_threads:
            # Ranks share the machine's cores; without this each would start a thread
            # per core and they would fight over them.
            torch.set_num_threads(spec.cpu_threads)
        if device.type == "cpu":
            progress.metrics["cpu_threads"] = float(torch.get_num_threads())
        meter = MemoryMeter(device)
        meter.start()
        plan = precision_plan(spec.request.config.precision, device)
        for note in plan.notes:
            progress.note(note)
        training = RankTraining(
            rank=rank,
            spec=spec,
            device=device,
            plan=plan,
            progress=progress,
            meter=meter,
            channel=channel,
            started=started,
        )

        def body() -> TrialResult:
            nonlocal sampler
            _join_process_group(rank, spec, device)
            # CUDA is initialised (set_device above): the sampler finds this rank's GPU by UUID.
            sampler = _rank_sampler(device, spec)
            with sampler if sampler is not None else contextlib.nullcontext():
                return training.execute()

        result = run_guarded(
            body,
            progress=progress,
            meter=meter,
            device=device,
            started=started,
            peak_flops=spec.total_peak_flops,
            cleanup=torch.compiler.reset if spec.request.config.compile else None,
        )
    except Exception as exc:  # set-up outside the guard (bad device): still a result
        result = TrialResult.failed(f"rank {rank} could not start: {type(exc).__name__}: {exc}"[:500])
    return with_rank_telemetry(result, sampler, device)


def _rank_sampler(device: torch.device, spec: RankSpec) -> TelemetrySampler | None:
    if device.type != "cuda":
        return None
    return telemetry_for_device(str(device), probed_memory_bandwidth=spec.request.peak_memory_bandwidth)


def with_rank_telemetry(
    result: TrialResult, sampler: TelemetrySampler | None, device: torch.device
) -> TrialResult:
    """`result` with this rank's NVML record and table line (the reason when there is none)."""
    try:
        if sampler is None:
            reason = CPU_RANK_REASON if device.type != "cuda" else "NVML sampling did not start"
            return dataclasses.replace(
                result, telemetry={**result.telemetry, "nvml_rank": rank_row(None, reason=reason)}
            )
        summary = sampler.summary()
        telemetry = {
            **result.telemetry,
            "nvml": telemetry_record(summary, sampler.samples),
            "nvml_rank": rank_row(summary),
        }
        metrics = dict(result.metrics)
        if sampler.available and summary["samples"]:
            metrics.update(summary_metrics(summary))
        return dataclasses.replace(result, telemetry=telemetry, metrics=metrics)
    except Exception as exc:  # telemetry must never cost the rank its result
        row = {"available": False, "reason": f"telemetry failed: {type(exc).__name__}: {exc}"[:300], "samples": 0}
        return dataclasses.replace(result, telemetry={**result.telemetry, "nvml_rank": row})


def _join_process_group(rank: int, spec: RankSpec, device: torch.device) -> None:
    world_size = spec.request.config.world_size
    timeout = timedelta(seconds=spec.timeout_s)
    store = dist.TCPStore(spec.store_host, spec.store_port, world_size + 1, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend=process_group_backend(device.type),
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
