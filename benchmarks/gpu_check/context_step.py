"""The GPU check's `cuda_context` step (issue 17, item 6): no worker's CUDA context sits on
the GPU where rank 0 of a multi-process trial trains.

One persistent local worker runs a single-GPU trial (its CUDA context then stays on GPU 0
for as long as the process lives), then a world_size 2 trial. The executor must launch
that from a fresh worker and the launcher must not initialise CUDA itself
(`tuner.executors.cuda_context`), so:

- with 2+ GPUs, while rank 0 trains NVML lists ONE process on GPU 0 (rank 0), never the
  launching worker; the trial is ok;
- with one GPU the world_size 2 trial cannot run (it fails as asking for 2 GPUs), but the
  same path is taken up to the ranks' start: the old worker's context is gone from GPU 0
  and the new launcher added none (NVML used memory back at its level before the first
  trial).

Per-process figures come from NVML's compute-process list; in a container NVML may not
show host PIDs, so the checks use process counts and used memory, and PIDs are recorded
for reading only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.gpu_check.common import Context, StepRecord, gpt_params, nvidia_smi_gpus, nvml_used_bytes

MIB = 1024**2
#: A CUDA context on a Hopper GPU takes ~0.5 GiB; anything above this counts as one.
CONTEXT_FLOOR_BYTES = 100 * MIB
#: NVML's used memory may move by a few MiB without any process starting.
BACK_TO_BASELINE_BYTES = 64 * MIB


def gpu0_processes() -> list[tuple[int, int | None]] | None:
    """(pid, used bytes) of each compute process on NVML's GPU 0; None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return [(p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


class Gpu0Watch:
    """Samples GPU 0's compute processes every `interval_s` while a trial runs."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[list[tuple[int, int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu0-watch", daemon=True)

    def __enter__(self) -> Gpu0Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = gpu0_processes()
            if seen:
                self.samples.append(seen)
            self._stop.wait(self.interval_s)

    @property
    def most_processes(self) -> int:
        return max((len(s) for s in self.samples), default=0)

    def pids(self) -> set[int]:
        return {pid for sample in self.samples for pid, _ in sample}


def _used_settled(limit_bytes: int | None, timeout_s: float = 3.0) -> int | None:
    """NVML used memory of GPU 0, waiting up to `timeout_s` for it to fall to `limit_bytes`
    (the driver frees a killed process's memory a moment after it is reaped)."""
    deadline = time.monotonic() + timeout_s
    used = nvml_used_bytes(0)
    while limit_bytes is not None and used is not None and used > limit_bytes and time.monotonic() < deadline:
        time.sleep(0.2)
        used = nvml_used_bytes(0)
    return used


def step_cuda_context(ctx: Context, record: StepRecord) -> None:
    """A single-GPU trial, then world_size 2 from the same executor slot: no stale context on GPU 0."""
    import benchmarks.gpu_check.workloads  # noqa: F401  (registers gpu_check_gpt in the workers)
    from benchmarks.gpu_check.steps import brief, quick_config, request_for
    from tuner.executors.local import LocalExecutor

    gpus = len(nvidia_smi_gpus() or [])
    params = gpt_params(ctx)
    figures: dict[str, Any] = {"gpus": gpus}
    baseline = nvml_used_bytes(0)
    executor = LocalExecutor(workers=1, device="cuda")
    try:
        single = executor.submit(
            request_for(
                "gpu_check_gpt", params, quick_config(ctx), device="cuda", steps=3, warmup=1, number=0
            )
        ).result()
        holder = executor.worker_pids()[0]
        held = nvml_used_bytes(0)
        figures["after_single_gpu_trial"] = {"worker_pid": holder, "gpu0_processes": gpu0_processes()}
        with Gpu0Watch() as watch:
            multi = executor.submit(
                request_for(
                    "gpt", params, quick_config(ctx, world_size=2), device="cuda", steps=4, warmup=2, number=1
                )
            ).result()
        launcher = executor.worker_pids()[0]
    finally:
        executor.close()
    after = _used_settled(None if baseline is None else baseline + BACK_TO_BASELINE_BYTES)
    context = None if held is None or baseline is None else held - baseline
    figures.update(
        single_trial=brief(single),
        multi_trial=brief(multi),
        launcher_pid=launcher,
        nvml_used_bytes={"before": baseline, "after_single_trial": held, "after_multi_trial": after},
        worker_context_bytes=context,
        during_multi_trial={"samples": len(watch.samples), "most_processes": watch.most_processes},
        launcher_seen_on_gpu0=launcher in watch.pids(),
    )
    record.figures.update(figures)
    record.check("single-GPU trial ok", single.ok, str(single.reason))
    record.check(
        "the worker held a CUDA context after it (NVML used grew)",
        context is not None and context >= CONTEXT_FLOOR_BYTES,
        f"{(context or 0) / MIB:.0f} MiB (None: no NVML reading)",
    )
    record.check(
        "a fresh worker launched the world_size 2 trial",
        launcher != holder and any("fresh worker" in note for note in multi.notes),
        f"worker {holder} -> {launcher}; notes {list(multi.notes)[:3]}",
    )
    record.check(
        "the launcher never appeared on GPU 0",
        not figures["launcher_seen_on_gpu0"],
        f"GPU 0 pids while the trial ran: {sorted(watch.pids())}",
    )
    if gpus >= 2:
        record.check("world_size 2 trial ok", multi.ok, str(multi.reason))
        record.check(
            "while rank 0 trained, GPU 0 held one process (rank 0)",
            watch.most_processes == 1,
            f"most processes on GPU 0 at once: {watch.most_processes} over {len(watch.samples)} samples",
        )
    else:
        record.notes.append(
            "one GPU: the world_size 2 trial cannot train here (it fails as needing 2 GPUs); checked "
            "instead that the old worker's context left GPU 0 and the launcher created none"
        )
        record.check(
            "world_size 2 refused for want of GPUs, not a CUDA error",
            "needs 2 GPUs" in (multi.reason or ""),
            str(multi.reason),
        )
    record.check(
        "GPU 0 memory back to its level before the first trial (no context left behind)",
        after is not None and baseline is not None and after - baseline <= BACK_TO_BASELINE_BYTES,
        f"{(baseline or 0) / MIB:.0f} -> {(after or 0) / MIB:.0f} MiB used",
    )
