"""Which GPU(s) a local worker sees, the device its trials ask for, and its environment.

Pure functions (no torch, no NVML), so every decision here is tested on a CPU machine;
`tuner.executors.local` only applies them.

Numbering: CUDA numbers the GPUs it can see "fastest first" unless CUDA_DEVICE_ORDER says
PCI_BUS_ID, while NVML (nvidia-smi, the probe, telemetry) always uses PCI bus order. On a
machine with GPUs of different speed those disagree. Without a CUDA_VISIBLE_DEVICES of
its own, the executor hands out NVML's indices, so the worker gets
CUDA_DEVICE_ORDER=PCI_BUS_ID: its index then means the GPU nvidia-smi shows under it.
With the parent's CUDA_VISIBLE_DEVICES the worker gets entries of that list, which mean
what they mean under the parent's order, so the order is left as the parent has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tuner.errors import FieldProblem, ValidationError

__all__ = [
    "TF32_OVERRIDE_VAR",
    "WorkerEnvironment",
    "assign_gpus",
    "gpu_sharing_warning",
    "trial_device_in_worker",
    "worker_environment",
]

#: Set to 1 in NGC containers: cuBLAS then runs fp32 matmuls as TF32 whatever torch's
#: `allow_tf32` switches say, so an "fp32" trial would silently measure TF32.
TF32_OVERRIDE_VAR = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"


def _cuda_index(device: str) -> int | None:
    """N of "cuda:N"; None for any other device string."""
    if not device.startswith("cuda:"):
        return None
    text = device.split(":", 1)[1]
    return int(text) if text.isdigit() else None


def assign_gpus(workers: int, device: str, gpu_ids: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per worker: None leaves the environment as it is.

    `gpu_ids` are the GPUs the parent may use: its own CUDA_VISIBLE_DEVICES entries
    (indices, GPU-… or MIG-… UUIDs) or, without that variable, NVML's indices.

    One worker sees every GPU (a world_size > 1 trial can use them all). N workers split
    the GPUs into N equal groups (one trial per GPU, or per group for multi-GPU trials);
    with more workers than GPUs, workers share GPUs round-robin (`gpu_sharing_warning`
    says why that is a bad idea). `device="cpu"` hides the GPUs so a CPU trial never
    initialises CUDA. `device="cuda:N"` is the parent's N-th visible GPU: with a parent
    CUDA_VISIBLE_DEVICES="2,3", cuda:1 is physical GPU 3, so the worker sees "3" (and its
    trials use cuda:0, see `trial_device_in_worker`).
    """
    if device == "cpu":
        return [""] * workers
    index = _cuda_index(device)
    if index is not None:
        if not gpu_ids:  # nothing known about the GPUs (no NVML): trust the index
            return [str(index)] * workers
        if index >= len(gpu_ids):
            raise ValidationError(
                FieldProblem(
                    "device",
                    device,
                    f"only {len(gpu_ids)} GPU(s) are visible ({','.join(gpu_ids)})",
                    f"use cuda:0 .. cuda:{len(gpu_ids) - 1}, cuda or auto",
                )
            )
        return [gpu_ids[index]] * workers
    if workers == 1 or not gpu_ids:
        return [None] * workers
    if len(gpu_ids) >= workers:
        per = len(gpu_ids) // workers
        return [",".join(gpu_ids[i * per : (i + 1) * per]) for i in range(workers)]
    return [gpu_ids[i % len(gpu_ids)] for i in range(workers)]


def trial_device_in_worker(device: str, cuda_visible_devices: str | None) -> str:
    """The device a worker's trials ask for: "cuda:N" becomes "cuda:0" once the worker's
    CUDA_VISIBLE_DEVICES names that one GPU (inside the worker it is the only one, so
    "cuda:1" would fail with "only 1 CUDA device(s) exist")."""
    if _cuda_index(device) is not None and cuda_visible_devices:
        return "cuda:0"
    return device


def gpu_sharing_warning(workers: int, device: str, gpu_ids: list[str]) -> str | None:
    """Why this worker/GPU assignment measures badly, with the fix; None when it is fine.

    Workers that share a GPU run their trials at the same time on it: each trial's
    throughput is a share of the GPU, and one trial's memory (plus each worker's CUDA
    context) is missing for the other, so configs that fit alone run out of memory.
    """
    if device == "cpu" or workers <= 1:
        return None
    if _cuda_index(device) is not None:
        return (
            f"{workers} workers all use {device}: their trials share one GPU at the same time, so "
            "throughput and peak memory describe a shared GPU, not this config alone; "
            "use --workers 1 with an explicit cuda:N, or --device cuda to give each worker its own GPU"
        )
    if gpu_ids and workers > len(gpu_ids):
        return (
            f"{workers} workers but {len(gpu_ids)} GPU(s) ({','.join(gpu_ids)}): workers share GPUs and "
            "their trials run on a GPU at the same time, so throughput and peak memory are not this "
            f"config's alone; use --workers {len(gpu_ids)} (one worker per GPU)"
        )
    return None


@dataclass(frozen=True)
class WorkerEnvironment:
    """Environment changes for one worker process, applied before torch is imported."""

    set: dict[str, str]
    unset: tuple[str, ...]
    #: added to every result of the worker's trials
    notes: tuple[str, ...] = ()


def worker_environment(parent_env: Mapping[str, str], cuda_visible_devices: str | None) -> WorkerEnvironment:
    """What a worker changes in the environment it inherits from `parent_env`.

    - CUDA_VISIBLE_DEVICES: the worker's GPU(s) from `assign_gpus` (None: inherited).
    - CUDA_DEVICE_ORDER=PCI_BUS_ID when the GPU ids are NVML's indices (the parent has no
      CUDA_VISIBLE_DEVICES), so CUDA's indices are NVML's (module docstring).
    - TORCH_ALLOW_TF32_CUBLAS_OVERRIDE removed: with it, "fp32" trials run TF32 matmuls
      (NGC containers set it); the tf32 precision turns TF32 on itself when asked.
    """
    to_set: dict[str, str] = {}
    if cuda_visible_devices is not None:
        to_set["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    if "CUDA_VISIBLE_DEVICES" not in parent_env and parent_env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        to_set["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    unset: list[str] = []
    notes: list[str] = []
    if TF32_OVERRIDE_VAR in parent_env:
        unset.append(TF32_OVERRIDE_VAR)
        value = parent_env[TF32_OVERRIDE_VAR]
        if value.strip() not in ("", "0"):
            notes.append(
                f"{TF32_OVERRIDE_VAR}={value} was set for the study (NGC containers set it); the worker "
                "unset it, so fp32 trials ran real fp32 matmuls"
            )
    return WorkerEnvironment(set=to_set, unset=tuple(unset), notes=tuple(notes))
