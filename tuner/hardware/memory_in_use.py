"""Memory other processes use on the GPUs now, for a hardware profile read from a file.

`tuner probe` records what other processes held on each GPU when it ran, and the memory
model leaves that out of what a trial may use. A profile saved earlier (`tuner probe
--output`, reused with `tune --hardware`, often after a slow `--measure`) would carry that
old figure: a GPU that has since filled up would look free. So a study that is given a
profile re-reads the figure from NVML for each of its GPUs that this machine has (same
UUID); GPUs this machine does not have keep the recorded one (planning for another
machine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from tuner.hardware.profile import HardwareProfile

__all__ = ["with_current_memory_use", "with_memory_used_by_others"]


def with_memory_used_by_others(profile: HardwareProfile, used: Mapping[str, int]) -> HardwareProfile:
    """`profile` with each GPU's `memory_used_by_others_bytes` taken from `used`
    (UUID -> bytes) where its UUID is there; the same object when nothing changes."""
    if profile.device_type != "cuda" or not used:
        return profile
    gpus = tuple(
        dataclasses.replace(gpu, memory_used_by_others_bytes=int(used[gpu.uuid]))
        if gpu.uuid is not None and gpu.uuid in used
        else gpu
        for gpu in profile.gpus
    )
    if gpus == tuple(profile.gpus):
        return profile
    return dataclasses.replace(profile, gpus=gpus)


def with_current_memory_use(profile: HardwareProfile) -> HardwareProfile:
    """`profile` with this machine's current NVML figures (see the module docstring)."""
    if profile.device_type != "cuda":
        return profile
    from tuner.hardware.probe import memory_used_by_others_now

    return with_memory_used_by_others(profile, memory_used_by_others_now())
