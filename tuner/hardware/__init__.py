"""The hardware profile: what the machine a study runs on can do.

`probe()` reads the GPUs through NVML (or the CPU from /proc) into a `HardwareProfile`;
`load_profile` reads a saved one (such as shared/data/h200/probe.json). pynvml is
imported here only (`probe`, `telemetry`), and lazily. Modules: `profile` (the type and
the known GPUs' peaks), `probe`, `cpu_info`, `telemetry` (NVML sampling while a trial
trains).
"""

from tuner.hardware.probe import (
    NvmlUnavailableError,
    collect_readings,
    cpu_profile,
    decode_clock_event_reasons,
    nvml_session,
    probe,
)
from tuner.hardware.profile import GpuInfo, HardwareProfile, load_profile

__all__ = [
    "GpuInfo",
    "HardwareProfile",
    "NvmlUnavailableError",
    "collect_readings",
    "cpu_profile",
    "decode_clock_event_reasons",
    "load_profile",
    "nvml_session",
    "probe",
]
