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
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from tuner.trial.distributed.launch import detach_and_die_with_parent
from tuner.trial.distributed.rank_loop import RankTraining
from tuner.trial.distributed.rank_spec import RankChannel, RankSpec
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
    started = time.perf_counter()
    device = torch.device("cuda", rank) if spec.device_type == "cuda" else torch.device("cpu")
    progress = TrialProgress(
        item_unit=spec.workload.item_unit,
        timer=StepTimer(
            warmup_steps=spec.request.budget.warmup_steps, max_seconds=spec.request.budget.max_seconds
        ),
    )
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif spec.cpu_threads:
            # Ranks share the machine's cores; without this each would start a thread
            # per core and they would fight over them.
            torch.set_num_threads(spec.cpu_threads)
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
            _join_process_group(rank, spec, device)
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
    try:
        channel.send_result(result)
    except (BrokenPipeError, EOFError, OSError):
        os._exit(4)  # the launching process is gone; nothing left to report to
    finally:
        if dist.is_initialized():
            # No barrier here: a peer may be dead, and this process exits right after.
            dist.destroy_process_group()


def _join_process_group(rank: int, spec: RankSpec, device: torch.device) -> None:
    world_size = spec.request.config.world_size
    timeout = timedelta(seconds=spec.timeout_s)
    store = dist.TCPStore("127.0.0.1", spec.store_port, world_size + 1, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
