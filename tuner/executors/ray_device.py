"""The device a trial asks for inside a Ray task (pure; no Ray, no torch).

A study's `cuda:N` is the N-th GPU visible to the study's process (as for the local
executor, `tuner.executors.worker_env`). On Ray the scheduler picks the GPU(s) of a task
and, by default, sets the task's CUDA_VISIBLE_DEVICES to them: inside the task they are
cuda:0, cuda:1, ..., so `cuda:1` of a one-GPU task would fail with "only 1 CUDA
device(s) exist". A task with GPUs assigned therefore runs on the first of them, with a
note; with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES set Ray leaves every GPU visible
and its ids are the indices to use.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ray_trial_device"]


def ray_trial_device(
    device: str, assigned_gpu_ids: Sequence[int | str], *, ray_sets_visible_devices: bool = True
) -> tuple[str, str | None]:
    """(the device the trial uses in the task, a note when it differs from `device`)."""
    if not device.startswith("cuda:") or not assigned_gpu_ids:
        return device, None  # "auto", "cuda", "cpu", or a task Ray gave no GPU
    first = str(assigned_gpu_ids[0])
    target = "cuda:0" if ray_sets_visible_devices or not first.isdigit() else f"cuda:{first}"
    if target == device:
        return device, None
    ids = ",".join(str(i) for i in assigned_gpu_ids)
    return target, (
        f"device {device} names a GPU of the study's machine; Ray chose this trial's GPU "
        f"(Ray GPU id {ids}), so it ran as {target} of its task"
    )
