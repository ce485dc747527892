"""Turn whatever a trial body does into a `TrialResult`: OOM -> `oom`, errors -> `failed`.

A trial never raises for its own failures: one bad config must not take a worker or a
study down. Shared by every trial kind (training now, inference next).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.oom import is_out_of_memory, release_memory
from tuner.trial.progress import TrialProgress
from tuner.types import TrialResult, TrialStatus

_MAX_REASON_CHARS = 500


def run_guarded(
    body: Callable[[], TrialResult],
    *,
    progress: TrialProgress,
    meter: MemoryMeter,
    device: torch.device,
    started: float,
    peak_flops: float | None = None,
    cleanup: Callable[[], None] | None = None,
) -> TrialResult:
    """Run `body`; on an exception build the result from `progress` instead."""
    status: TrialStatus | None = None
    reason = ""
    peak: int | None = None
    try:
        return body()
    except Exception as exc:
        # Read the peak while the failure is fresh; the counters survive the cleanup anyway.
        # A device whose set-up failed (or whose context broke) may refuse even that.
        try:
            peak = meter.peak_bytes()
        except Exception:
            peak = None
        if is_out_of_memory(exc):
            status, reason = TrialStatus.OOM, "out of memory: " + _memory_line(exc)
        else:
            status, reason = TrialStatus.FAILED, f"{type(exc).__name__}: {_message(exc)}"
        # Leaving the except block drops the traceback, and with it the frames that still
        # hold the model, optimizer and activations; only then can memory be released.
    finally:
        try:
            if cleanup is not None:
                cleanup()
            # Only a normal end without compiler state to drop may skip the full collection.
            release_memory(device, full=status is not None or cleanup is not None)
        except Exception:
            # After a sticky CUDA error (illegal address, device-side assert) every CUDA
            # call fails, emptying the cache too; the trial's own error is the one to report.
            if status is None:
                raise
    assert status is not None  # only reached through the except clause
    for note in meter.notes:
        progress.note(note)
    return progress.to_result(
        status,
        reason=reason,
        peak_memory_bytes=peak,
        memory_kind=meter.kind,
        duration_s=time.perf_counter() - started,
        peak_flops=peak_flops,
    )


def _message(exc: BaseException) -> str:
    return (str(exc).strip() or repr(exc))[:_MAX_REASON_CHARS]


def _memory_line(exc: BaseException) -> str:
    lines = _message(exc).splitlines() or [""]
    # torch's CPU allocator message starts with an "[enforce fail at ...]" location; the
    # useful part (how many bytes were asked for) is on the line that mentions memory.
    for line in lines:
        if "memory" in line.lower():
            return line.strip()
    return lines[0].strip()
