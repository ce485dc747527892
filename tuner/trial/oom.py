"""Recognising out-of-memory errors and giving the memory back afterwards.

An OOM is a result (`oom`), not a crash: the search learns where the memory edge is. CUDA
raises `torch.OutOfMemoryError`; the CPU allocator raises a plain RuntimeError
("DefaultCPUAllocator: can't allocate memory"), and some kernels wrap CUDA's message in a
RuntimeError too, so the message is checked as well as the type. cuBLAS failing to get
its workspace (CUBLAS_STATUS_ALLOC_FAILED, a RuntimeError raised at the first matmul of a
nearly full GPU) is the same condition under another name.
"""

from __future__ import annotations

import gc

import torch

_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means the device (or host) ran out of memory."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(m in message for m in _OOM_MESSAGES)
    return False


def release_memory(device: torch.device, *, full: bool = True) -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next trial starts clean.

    Call this after the references to the model and optimizer (and the exception's
    traceback, which holds the frames that hold them) are gone.

    `full=False` is for a CPU trial that returned normally: only the young generations are
    collected. A full collection scans every object torch ever created (~0.5 s per trial
    in a process whose heap is not frozen), and such a trial leaves no cyclic garbage
    holding tensors (its model and optimizer are freed by reference counting). CUDA always
    gets the full collection: garbage there pins cached blocks the next trial would miss.
    """
    if full or device.type == "cuda":
        gc.collect()
    else:
        gc.collect(generation=1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
