"""CUDA errors that break the process's CUDA context for good ("sticky" errors).

After an illegal memory access, a device-side assert or a kernel launch failure the CUDA
context of the process is unusable: every later CUDA call fails with the same error, so
a persistent worker that carried on would report each following config as a failed
trial. Such a trial's worker exits after sending its result and a fresh process runs the
next trial (`tuner.executors.worker_process`).

An out-of-memory error is not sticky (the allocator frees and the next trial runs); see
`tuner.trial.oom`. Plain strings only: no torch import, the worker checks reasons before
torch is loaded.
"""

from __future__ import annotations

__all__ = ["STICKY_CUDA_ERROR_MARKERS", "is_sticky_cuda_error"]

#: Lower-case fragments of the messages of CUDA (cudaError*), NCCL and cuBLAS errors
#: after which the context cannot be used again.
STICKY_CUDA_ERROR_MARKERS: tuple[str, ...] = (
    "illegal memory access",  # cudaErrorIllegalAddress
    "device-side assert",  # cudaErrorAssert
    "unspecified launch failure",  # cudaErrorLaunchFailure
    "misaligned address",  # cudaErrorMisalignedAddress
    "illegal instruction",  # cudaErrorIllegalInstruction
    "hardware stack error",  # cudaErrorHardwareStackError
    "invalid program counter",  # cudaErrorInvalidPc
    "uncorrectable ecc error",  # cudaErrorECCUncorrectable
    "the launch timed out",  # cudaErrorLaunchTimeout
    "cudaerrorillegaladdress",
    "cublas_status_execution_failed",  # what cuBLAS reports after a sticky error
    "nccl error",  # torch.distributed.DistBackendError: "NCCL error in: ..."
    "ncclunhandledcudaerror",
    "ncclsystemerror",
    "ncclinternalerror",
)


def is_sticky_cuda_error(error: BaseException | str) -> bool:
    """Whether `error` (an exception or a trial's failure reason) leaves the CUDA context
    of this process unusable, so the process must be replaced."""
    message = str(error).lower()
    if "out of memory" in message:
        return False  # "CUDA error: out of memory" is recoverable
    return any(marker in message for marker in STICKY_CUDA_ERROR_MARKERS)
