"""The hardware probe: what this machine's GPUs (or CPU) can do, as a `HardwareProfile`.

Two stages, so a real machine's readings can be replayed through the same code:

1. `collect_readings()` asks NVML for every field and returns the raw readings format of
   `shared/data/h200/probe.json`. Each field is read on its own; a driver refusal
   (`pynvml.NVMLError`) records `"ERR <message>"` for that field instead of aborting.
2. `tuner.hardware.profile.profile_from_raw_readings` turns readings into the profile.

Without NVML (no library, no driver) or with zero GPUs, `probe()` returns the CPU profile
with a one-line `note` saying why. This is the only module that imports `pynvml`, and it
does so inside functions: `import tuner.hardware.probe` costs nothing on machines without GPUs.
Telemetry reaches NVML through `nvml_session()` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from tuner.errors import TunerError
from tuner.hardware.cpu_info import (
    cpu_capability,
    estimate_cpu_peak_tflops,
    fast_cpu_precisions,
    read_cpu_info,
)
from tuner.hardware.profile import HardwareProfile, profile_from_raw_readings

__all__ = [
    "CLOCK_EVENT_REASONS",
    "NvmlUnavailableError",
    "collect_readings",
    "cpu_profile",
    "decode_clock_event_reasons",
    "host_readings",
    "nvml_session",
    "probe",
    "used_by_others",
]

# nvmlClocksEventReason* bits (nvml.h) and the names we report. Used when the pynvml
# module itself is missing; otherwise the values are read from pynvml's constants.
_REASON_CONSTANTS: tuple[tuple[str, str, int], ...] = (
    ("GpuIdle", "gpu_idle", 0x1),
    ("ApplicationsClocksSetting", "applications_clocks_setting", 0x2),
    ("SwPowerCap", "sw_power_cap", 0x4),
    ("HwSlowdown", "hw_slowdown", 0x8),
    ("SyncBoost", "sync_boost", 0x10),
    ("SwThermalSlowdown", "sw_thermal_slowdown", 0x20),
    ("HwThermalSlowdown", "hw_thermal_slowdown", 0x40),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown", 0x80),
    ("DisplayClockSetting", "display_clock_setting", 0x100),
    ("BoardLimit", "board_limit", 0x200),
    ("Reliability", "reliability", 0x400),
)


class NvmlUnavailableError(TunerError):
    """NVML cannot be used here (no library, no driver, no permission)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"NVML unavailable ({reason})")


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailableError(f"the nvidia-ml-py package is not installed: {exc}") from None
    return pynvml


@contextlib.contextmanager
def nvml_session() -> Iterator[ModuleType]:
    """Initialise NVML, yield the `pynvml` module, shut NVML down again.

    NVML counts init/shutdown pairs, so nested sessions (a probe inside a sampled trial)
    are safe. Raises `NvmlUnavailableError` with NVML's own message when init fails.
    """
    nvml = _import_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailableError(str(exc)) from None
    try:
        yield nvml
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def clock_event_reason_bits() -> dict[int, str]:
    """Bit -> name of each clock-event (throttle) reason, from pynvml's constants."""
    try:
        import pynvml
    except ImportError:
        return {bit: name for _, name, bit in _REASON_CONSTANTS}
    bits: dict[int, str] = {}
    for suffix, name, fallback in _REASON_CONSTANTS:
        value = getattr(pynvml, f"nvmlClocksEventReason{suffix}", None)
        if value is None:  # older bindings only have the "Throttle" spelling
            value = getattr(pynvml, f"nvmlClocksThrottleReason{suffix}", fallback)
        bits.setdefault(int(value), name)
    return bits


CLOCK_EVENT_REASONS: tuple[str, ...] = tuple(name for _, name, _ in _REASON_CONSTANTS)


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Names of the reasons set in an NVML clock-event bitmask (4 -> ["sw_power_cap"])."""
    names = []
    remaining = int(mask)
    for bit, name in sorted(clock_event_reason_bits().items()):
        if remaining & bit:
            names.append(name)
            remaining &= ~bit
    if remaining:
        names.append(f"unknown_{remaining:#x}")
    return names


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _reader(nvml: ModuleType) -> Callable[..., Any]:
    """`read(fn_name, *args)`: call one NVML function, or return "ERR <why>" on refusal."""

    def read(fn_name: str, *args: Any) -> Any:
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            return f"ERR this nvidia-ml-py has no {fn_name}"
        try:
            return _text(fn(*args))
        except nvml.NVMLError as exc:
            return f"ERR {exc}"

    return read


def _ok(value: Any) -> bool:
    return not (isinstance(value, str) and value.startswith("ERR"))


def _nvlink_states(nvml: ModuleType, read: Callable[..., Any], handle: Any) -> list[Any]:
    """State of each NVLink link; `["ERR …"]` when link 0 is refused (no NVLink)."""
    states: list[Any] = []
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        state = read("nvmlDeviceGetNvLinkState", handle, link)
        if not _ok(state):
            # Links past the last one are refused too; only link 0's refusal means the
            # GPU has no usable NVLink at all.
            return states or [state]
        states.append(int(state))
    return states


def _mig_readings(nvml: ModuleType, read: Callable[..., Any], handle: Any) -> list[dict[str, Any]] | str:
    """UUID and memory of each MIG device of a GPU in MIG mode ([] for none)."""
    count = read("nvmlDeviceGetMaxMigDeviceCount", handle)
    if not _ok(count):
        return str(count)
    devices = []
    for slot in range(int(count)):
        mig = read("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        if not _ok(mig):
            continue  # an empty slot
        memory = read("nvmlDeviceGetMemoryInfo", mig)
        uuid = read("nvmlDeviceGetUUID", mig)
        if _ok(memory) and _ok(uuid):
            devices.append({"uuid": uuid, "memory_total": int(memory.total)})
    return devices


def _memory_used_by_others(nvml: ModuleType, read: Callable[..., Any], handle: Any) -> Any:
    """Bytes other processes hold on the GPU: NVML's v2 `used` (which, unlike v1's,
    leaves out what the driver reserves on an idle GPU) minus this process's own use."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is None:
        return "ERR this nvidia-ml-py has no nvmlMemory_v2"
    memory = read("nvmlDeviceGetMemoryInfo", handle, version)
    if not _ok(memory):
        return memory
    processes = read("nvmlDeviceGetComputeRunningProcesses", handle)
    per_process = [(p.pid, p.usedGpuMemory) for p in processes] if _ok(processes) else []
    return used_by_others(int(memory.used), per_process, os.getpid())


def memory_used_by_others_now() -> dict[str, int]:
    """UUID -> bytes other processes hold on that GPU right now; {} where NVML cannot say
    (no driver: a CPU machine, or a profile planned on another machine)."""
    try:
        with nvml_session() as nvml:
            read = _reader(nvml)
            count = read("nvmlDeviceGetCount")
            found: dict[str, int] = {}
            for index in range(count if _ok(count) else 0):
                handle = read("nvmlDeviceGetHandleByIndex", index)
                uuid = read("nvmlDeviceGetUUID", handle) if _ok(handle) else handle
                used = _memory_used_by_others(nvml, read, handle) if _ok(handle) else handle
                if _ok(uuid) and isinstance(used, int):
                    found[uuid] = used
            return found
    except NvmlUnavailableError:
        return {}


def used_by_others(used_bytes: int, per_process: list[tuple[int, int | None]], own_pid: int) -> int:
    """GPU memory in use by other processes: all used memory less this process's own
    (a probe run by a process that already holds a CUDA context must not count itself).
    NVML gives None for a process's use where it may not see it (containers)."""
    own = sum(int(used or 0) for pid, used in per_process if pid == own_pid)
    return max(0, used_bytes - own)


def _gpu_readings(nvml: ModuleType, index: int) -> dict[str, Any]:
    read = _reader(nvml)
    handle = read("nvmlDeviceGetHandleByIndex", index)
    if not _ok(handle):
        return {"index": index, "handle": handle}
    memory = read("nvmlDeviceGetMemoryInfo", handle)
    cc = read("nvmlDeviceGetCudaComputeCapability", handle)
    pci = read("nvmlDeviceGetPciInfo", handle)
    mig_mode = read("nvmlDeviceGetMigMode", handle)
    return {
        "index": index,
        "name": read("nvmlDeviceGetName", handle),
        "memory_total": memory.total if _ok(memory) else memory,
        "memory_free": memory.free if _ok(memory) else memory,
        "cc": list(cc) if _ok(cc) else cc,
        "sm_clock_max": read("nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_SM),
        "mem_clock_max": read("nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_MEM),
        "mem_bus_width": read("nvmlDeviceGetMemoryBusWidth", handle),
        "pcie_gen": read("nvmlDeviceGetCurrPcieLinkGeneration", handle),
        "pcie_gen_max": read("nvmlDeviceGetMaxPcieLinkGeneration", handle),
        "pcie_width": read("nvmlDeviceGetCurrPcieLinkWidth", handle),
        "pcie_width_max": read("nvmlDeviceGetMaxPcieLinkWidth", handle),
        "power_limit_mw": read("nvmlDeviceGetPowerManagementLimit", handle),
        "num_cores": read("nvmlDeviceGetNumGpuCores", handle),
        "mig_mode": list(mig_mode) if _ok(mig_mode) else mig_mode,
        "mig_devices": _mig_readings(nvml, read, handle) if _ok(mig_mode) and mig_mode[0] else [],
        "memory_used_others": _memory_used_by_others(nvml, read, handle),
        "ecc": list(e) if _ok(e := read("nvmlDeviceGetEccMode", handle)) else e,
        "uuid": read("nvmlDeviceGetUUID", handle),
        "arch": read("nvmlDeviceGetArchitecture", handle),
        "nvlink": _nvlink_states(nvml, read, handle),
        "pci_bus_id": _text(pci.busId) if _ok(pci) else pci,
    }


def host_readings() -> dict[str, Any]:
    """The host CPU and RAM, in the readings format's `host` block."""
    info = read_cpu_info()
    return {
        "cpu_count": info.logical_cpus,
        "physical_cores": info.physical_cores,
        "ram_bytes": info.ram_bytes,
        "cpu_model": info.model,
        "cpu_capability": cpu_capability(info.flags),
    }


def collect_readings() -> dict[str, Any]:
    """Every NVML field of every GPU, in the raw readings format of probe.json.

    Raises `NvmlUnavailableError` (with NVML's reason, e.g. "NVML Shared Library Not
    Found") when NVML cannot be initialised; a refused field never raises.
    """
    started = time.perf_counter()
    with nvml_session() as nvml:
        read = _reader(nvml)
        driver = read("nvmlSystemGetDriverVersion")
        cuda_driver = read("nvmlSystemGetCudaDriverVersion")
        count = read("nvmlDeviceGetCount")
        gpus = [_gpu_readings(nvml, i) for i in range(count)] if _ok(count) else []
    readings: dict[str, Any] = {
        "source": "nvml",
        "driver": driver,
        "cuda_driver": cuda_driver,
        "gpu_count": count,
        "gpus": gpus,
        "host": host_readings(),
    }
    readings["probe_s"] = time.perf_counter() - started
    return readings


def cpu_profile(measure: bool = False, note: str | None = None) -> HardwareProfile:
    """The profile of this machine's CPU, from /proc (torch only when `measure`)."""
    info = read_cpu_info()
    peaks: dict[str, float] = {}
    sources: dict[str, str] = {}
    estimate = estimate_cpu_peak_tflops(info)
    if estimate is not None:
        peaks, how = estimate
        sources = dict.fromkeys(peaks, how)
    bandwidth = None
    measured = False
    notes = [note] if note else []
    if info.ram_note:
        notes.append(f"RAM {info.ram_note}")
    if measure:
        from tuner.trial.measure_peaks import measure_cpu_peaks

        result = measure_cpu_peaks()
        peaks["fp32"] = result["matmul_fp32_tflops"]
        sources["fp32"] = f"measured: {result['matmul_size']}^3 fp32 matmul, {result['threads']} threads"
        bandwidth = result["copy_TBps_rw"] * 1e12
        sources["bandwidth"] = "measured: memory copy, read+write bytes"
        measured = True
    unavailable = {}
    if info.ram_bytes is None:
        unavailable["ram_bytes"] = "/proc/meminfo unreadable"
    return HardwareProfile(
        device_type="cpu",
        cpu_count=info.logical_cpus,
        ram_bytes=info.ram_bytes,
        cpu_model=info.model,
        cpu_capability=cpu_capability(info.flags),
        # bf16 autocast works on every CPU (it is just not fast without avx512_bf16/AMX:
        # fast_precisions says which are worth trying).
        supports_bf16=True,
        supports_tf32=False,  # no TF32 units; the tf32 knob is a no-op on CPU
        supports_fp8=False,
        # SDPA's CPU kernel is a flash-style tiled kernel: attention memory stays O(seq).
        supports_flash_attention=True,
        fast_precisions=fast_cpu_precisions(info.flags),
        peak_tflops=peaks,
        memory_bandwidth_bytes_per_s=bandwidth,
        peaks_measured=measured,
        source="cpu-fallback",
        note="; ".join(notes) or None,
        peak_sources=sources,
        unavailable=unavailable,
    )


def _measured_gpu_readings() -> dict[str, Any]:
    """Measured peaks of GPU 0 in the readings format, or why they could not be measured."""
    from tuner.trial.measure_peaks import measure_gpu_peaks

    try:
        return measure_gpu_peaks(0)
    except (TunerError, RuntimeError) as exc:
        # RuntimeError covers CUDA errors and out-of-memory on a GPU that others are using:
        # the probe still answers, with datasheet peaks and a note saying why.
        return {
            "measure_error": f"{type(exc).__name__}: {(str(exc).strip() or repr(exc)).splitlines()[0][:300]}"
        }


def probe(measure: bool = False) -> HardwareProfile:
    """Probe this machine: NVML when it sees GPUs, the CPU profile otherwise.

    With `measure`, matmul and copy ceilings are timed (torch is imported for that only)
    and replace the datasheet figures; the profile then says `peaks_measured`.
    """
    try:
        readings = collect_readings()
    except NvmlUnavailableError as exc:
        return cpu_profile(measure, note=f"NVML unavailable ({exc.reason}): using the CPU profile")
    if not readings["gpus"]:
        count = readings["gpu_count"]
        why = f"NVML could not count GPUs ({count})" if not _ok(count) else "NVML sees no GPU"
        return cpu_profile(measure, note=f"{why}: using the CPU profile")
    if measure:
        readings.update(_measured_gpu_readings())
    profile = profile_from_raw_readings(readings, source="nvml")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # NVML ignores CUDA_VISIBLE_DEVICES; say so, since trials will see fewer GPUs.
        extra = f"NVML lists all {profile.gpu_count} GPU(s); CUDA_VISIBLE_DEVICES={visible!r} limits trials"
        profile = dataclasses.replace(profile, note="; ".join(filter(None, [profile.note, extra])))
    return profile
