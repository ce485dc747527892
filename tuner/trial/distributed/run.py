"""`run_distributed_trial`: one training trial over `world_size` processes.

The launching process (a worker, or the study itself) serves the rendezvous, forks one
process per rank (`launch`), relays rank 0's reports to the pruner and its
answers back, collects every rank's result and combines them (`supervise`,
`aggregate`). Each rank wraps the workload's model for `sharding_stage`
(`wrap`) and runs the shared training step (`rank_loop`).

gloo on CPU, NCCL on CUDA (rank r on `cuda:r` of the visible devices). Whatever happens
in a rank (an exception, an OOM, a crash, a hang past `timeout_s`), this function
returns a `TrialResult` and no rank process outlives it. Ranks start from a forkserver
that imports the main module, so scripts need the `if __name__ == "__main__":` guard.
See docs/sharding.md.
"""

from __future__ import annotations

import os
import time

import torch

from tuner.errors import FieldProblem, ValidationError
from tuner.knobs import comm_environment
from tuner.trial.device import device_type_without_cuda_init
from tuner.trial.distributed.aggregate import combine
from tuner.trial.distributed.launch import RankProcesses, rendezvous_store
from tuner.trial.distributed.rank_main import rank_main
from tuner.trial.distributed.rank_spec import RankSpec
from tuner.trial.distributed.supervise import supervise
from tuner.trial.setup import Trainable
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialConfig, TrialResult

__all__ = ["DEFAULT_TIMEOUT_S", "run_distributed_trial"]

#: Seconds without any rank finishing a step before the trial counts as hung. Generous:
#: the first step includes building the model, NCCL set-up and any torch.compile.
DEFAULT_TIMEOUT_S = 600.0
#: After all results are in, how long ranks get to tear their process group down.
_EXIT_GRACE_S = 5.0


def run_distributed_trial(
    workload: Trainable, request: TrialRequest, reporter: Reporter, *, timeout_s: float | None = None
) -> TrialResult:
    """Train `workload` with `request.config` on `config.world_size` processes; never raises.

    `request.params` are resolved; each rank gets the request as is. `request.peak_flops`
    is one device's peak FLOP/s (the MFU is over all ranks' devices). `timeout_s` (default
    `DEFAULT_TIMEOUT_S`) is how long no rank may finish a step.
    """
    started = time.perf_counter()
    config, peak_flops = request.config, request.peak_flops
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    try:
        device_type = _rank_device_type(request.device, config.world_size)
        _check_backend_supports(config, device_type)
        _check_timeout(timeout)
    except ValidationError as exc:
        return TrialResult.failed(
            f"invalid trial input: {exc}",
            item_unit=workload.item_unit,
            duration_s=time.perf_counter() - started,
        )
    threads, notes = _cpu_threads(device_type, config.world_size)
    if device_type == "cpu" and comm_environment(config):
        notes.append("nccl_algo/nccl_proto have no effect on CPU ranks (gloo)")
    store = rendezvous_store(config.world_size, timeout)
    spec = RankSpec(
        workload=workload,
        request=request,
        device_type=device_type,
        store_port=store.port,
        owner_pid=os.getpid(),
        timeout_s=timeout,
        cpu_threads=threads,
        total_peak_flops=peak_flops * config.world_size if peak_flops else None,
        comm_env=tuple(comm_environment(config).items()),
    )
    ranks = RankProcesses()
    supervision = None
    try:
        ranks.start(rank_main, lambda rank, conn: (rank, spec, conn), config.world_size)
        supervision = supervise(ranks, reporter, timeout_s=timeout, max_steps=request.budget.max_steps)
    finally:
        # On success the ranks are already leaving; on failure the survivors are stuck
        # in a collective with a dead peer and must be killed now.
        clean = supervision is not None and supervision.first_failure is None and supervision.timeout is None
        ranks.kill_all(grace_s=_EXIT_GRACE_S if clean else 0.0)
        del store
    return combine(
        supervision,
        item_unit=workload.item_unit,
        world_size=config.world_size,
        duration_s=time.perf_counter() - started,
        notes=notes,
    )


def _rank_device_type(device: str, world_size: int) -> str:
    # Never initialise CUDA here: this process holds no GPU of its own, and a context
    # would sit on the GPU where rank 0 trains (see `device_type_without_cuda_init`).
    if device_type_without_cuda_init(device) != "cuda":
        return "cpu"
    count = torch.cuda.device_count()
    if world_size > count:
        raise ValidationError(
            FieldProblem(
                "world_size",
                world_size,
                f"needs {world_size} GPUs, but {count} are visible (one rank per GPU)",
                f"use world_size <= {count}, or device: cpu to run the ranks on the CPU with gloo",
            )
        )
    return "cuda"


def _check_backend_supports(config: TrialConfig, device_type: str) -> None:
    if device_type == "cpu" and config.grad_compression == "bf16" and config.sharding_stage <= 1:
        raise ValidationError(
            FieldProblem(
                "grad_compression",
                "bf16",
                "torch's bf16 compression hook needs NCCL on CUDA (or XCCL); gloo on the CPU has none",
                "use grad_compression: fp16, powersgd or none on the CPU",
            )
        )


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValidationError(FieldProblem("timeout_s", timeout, "must be > 0", "give seconds, e.g. 600"))


def _cpu_threads(device_type: str, world_size: int) -> tuple[int | None, list[str]]:
    if device_type != "cpu":
        return None, []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    notes = [f"{world_size} ranks on the CPU share {cores} cores through gloo; GPU timings will differ"]
    if world_size > cores:
        notes.append(f"world_size={world_size} exceeds the {cores} CPU cores: ranks are oversubscribed")
    given = omp_threads()
    if given is not None:
        # The user's (or the executor's) per-process share wins, as it does for a
        # world-size-1 trial, so both sizes run each rank on the same number of threads.
        return given, notes
    return max(1, cores // world_size), notes


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as a positive thread count, None when unset or not one."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None
