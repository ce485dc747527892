"""Whether a worker process holds a CUDA context, and when that must end the worker.

A CUDA context stays with its process until the process exits (torch has no way to
release it; `empty_cache` frees only the allocator's blocks). A persistent worker that ran
a single-GPU trial therefore keeps several hundred MiB on that GPU for the rest of its
life. That is harmless for its next single-GPU trial (the trial uses that same context)
but not for a multi-process trial: the worker only launches the ranks, and rank 0 trains
on the first visible GPU next to the worker's idle context, so rank 0 has less memory
than the memory model gives it (one context per trial process) and NVML's per-GPU figures
count the worker's context in. Such a trial starts from a fresh worker instead; the
launcher itself never initialises CUDA (`tuner.trial.device.device_type_without_cuda_init`).

No torch import here: the parent decides from what the worker reported.
"""

from __future__ import annotations

import sys

__all__ = ["cuda_context_held", "fresh_worker_reason"]


def cuda_context_held() -> bool:
    """Whether this process has initialised CUDA (and so holds a context on a GPU).

    Only asks torch if something already imported it: a worker that never imported
    torch has no context, and importing it here would cost seconds."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a broken CUDA state: treat it as held, so the worker is replaced
        return True


def fresh_worker_reason(device: str, world_size: int, holds_cuda_context: bool) -> str | None:
    """Why a worker must be replaced before it launches this trial, or None.

    Only a multi-process trial whose ranks may use the GPU is affected: a worker that
    holds a CUDA context runs on a GPU machine, so "auto" and "cuda" put the ranks on
    the GPUs too; "cpu" ranks never touch them."""
    if world_size <= 1 or not holds_cuda_context or device == "cpu":
        return None
    return (
        f"a fresh worker launched this world_size={world_size} trial: the previous one held a CUDA "
        "context from an earlier single-GPU trial, which would have taken GPU memory from rank 0 "
        "(on the first visible GPU) and counted in its measured memory"
    )
