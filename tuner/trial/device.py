"""Which device a trial runs on, and a clock that waits for it.

Kept apart from the training loop so an inference trial measures time and places tensors
the same way.
"""

from __future__ import annotations

import time

import torch

from tuner.errors import FieldProblem, ValidationError


def resolve_device(device: str) -> torch.device:
    """Turn `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` into a usable `torch.device`.

    `"auto"` picks the first GPU when CUDA is available, else the CPU. Asking for CUDA on a
    machine without it is an input error, not a silent fallback: the measurements would
    describe a different machine than the one asked about.
    """
    if device == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValidationError(
            FieldProblem("device", device, "is not a torch device", "use auto, cpu, cuda or cuda:N")
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError(
                FieldProblem("device", device, "CUDA is not available on this machine", "use auto or cpu")
            )
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise ValidationError(
                FieldProblem(
                    "device",
                    device,
                    f"only {torch.cuda.device_count()} CUDA device(s) exist",
                    f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
                )
            )
    elif resolved.type != "cpu":
        raise ValidationError(
            FieldProblem("device", device, "is not supported", "use auto, cpu, cuda or cuda:N")
        )
    return resolved


def device_type_without_cuda_init(device: str) -> str:
    """"cuda" or "cpu": the kind of device `resolve_device(device)` gives, found without
    initialising CUDA in this process.

    For the process that launches the ranks of a multi-process trial: it only needs the
    kind, and a CUDA context of its own would sit on the first visible GPU, where rank 0
    trains (hundreds of MiB off rank 0's memory, and in what NVML counts on that GPU).
    `torch.cuda.is_available()` and `device_count()` ask the driver without creating a
    context; `current_device()` (which `resolve_device` calls for "auto" and "cuda")
    initialises CUDA. The same input errors as `resolve_device`.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValidationError(
            FieldProblem("device", device, "is not a torch device", "use auto, cpu, cuda or cuda:N")
        ) from None
    if parsed.type == "cpu":
        return "cpu"
    if parsed.type != "cuda":
        raise ValidationError(
            FieldProblem("device", device, "is not supported", "use auto, cpu, cuda or cuda:N")
        )
    if not torch.cuda.is_available():
        raise ValidationError(
            FieldProblem("device", device, "CUDA is not available on this machine", "use auto or cpu")
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValidationError(
            FieldProblem(
                "device", device, f"only {count} CUDA device(s) exist", f"use cuda:0 .. cuda:{count - 1}"
            )
        )
    return "cuda"


def activate_device(device: torch.device) -> None:
    """Initialise CUDA and make `device` the current device (a no-op on the CPU).

    CUDA's per-device calls (`reset_peak_memory_stats`, streams, generators) assume the
    context exists; for an explicit `cuda:N` nothing has created it yet, and work queued
    without a current device lands on cuda:0.
    """
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait until all queued work on `device` is done (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_clock(device: torch.device) -> float:
    """Seconds on a monotonic clock, read after the device finished its queued work.

    CUDA kernels run asynchronously; reading the host clock without synchronising would
    time how fast Python enqueues work, not how fast the GPU does it.
    """
    synchronize(device)
    return time.perf_counter()


def use_cpu_threads(threads: int) -> None:
    """Train this process's CPU trial on exactly `threads` intra-op threads (an executor's
    per-rank CPU share: Ray's CPUs of the task, `OMP_NUM_THREADS`)."""
    torch.set_num_threads(max(1, int(threads)))
