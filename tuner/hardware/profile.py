"""`HardwareProfile`: what the machine a trial runs on can do.

Produced by the probe (`tuner.hardware`), saved as JSON, and read back by every command
that takes `--hardware FILE`. `load_profile` also accepts the raw NVML readings file of
the shared H200 data (`probe.json`) as it is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, HardwareProfileError
from tuner.hardware.gpu_specs import (
    ARCHITECTURES,
    CUDA_CORES_PER_SM,
    KNOWN_GPUS,
    NVML_ARCHITECTURES,
    cuda_capabilities,
    known_gpu_model,
    known_gpu_peaks,
    pcie_peak_bytes_per_s,
)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reported it. `None` means the field was unavailable."""

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    architecture: str | None = None
    sm_count: int | None = None
    cuda_cores: int | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    power_limit_w: float | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    nvlink_active_links: int | None = None
    mig_enabled: bool | None = None
    ecc_enabled: bool | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # raw field -> what the driver said
    nvlink_link_states: tuple[int, ...] = ()  # per link, 1 = active (NVML_FEATURE_ENABLED)
    pci_bus_id: str | None = None
    sm_count_source: str | None = None  # "torch" | "cuda cores / N per SM"
    #: with MIG on, the GPU instances ("MIG-…" UUIDs) and their memory: a trial on a
    #: MIG device can use its slice's memory, not the whole GPU's
    mig_uuids: tuple[str, ...] = ()
    mig_memory_bytes: tuple[int, ...] = ()
    #: memory other processes held on this GPU when it was probed (NVML's used memory
    #: without the driver's reserve); None when NVML could not say
    memory_used_by_others_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))
        object.__setattr__(self, "nvlink_link_states", tuple(self.nvlink_link_states))
        object.__setattr__(self, "mig_uuids", tuple(self.mig_uuids))
        object.__setattr__(self, "mig_memory_bytes", tuple(self.mig_memory_bytes))

    @property
    def pcie_link(self) -> tuple[int | None, int | None]:
        """(generation, width) of the link the GPU trains at under load.

        NVML's "max" figures are what the GPU and this system's slot support together; an
        idle GPU drops its link to a lower generation to save power, so the current figure
        read by a probe on an idle GPU (gen 1 is common) would understate the peak.
        """
        generation = self.pcie_gen_max if self.pcie_gen_max is not None else self.pcie_gen
        width = self.pcie_width_max if self.pcie_width_max is not None else self.pcie_width
        return generation, width

    @property
    def pcie_peak_bytes_per_s(self) -> float | None:
        """Peak PCIe bytes/s in each direction (`pcie_link`), None when NVML could not say."""
        return pcie_peak_bytes_per_s(*self.pcie_link)

    @property
    def dram_peak_bytes_per_s(self) -> float | None:
        """The theoretical memory bandwidth: the datasheet's, else 2 x max memory clock x
        bus width (NVML) — the rate at which a memory bus busy all the time moves bytes."""
        bandwidth = known_gpu_peaks(self.name, self.memory_total_bytes).get("bw")
        if bandwidth is None and self.max_mem_clock_mhz and self.memory_bus_width_bits:
            bandwidth = 2 * self.max_mem_clock_mhz * 1e6 * self.memory_bus_width_bits / 8
        return bandwidth

    @property
    def trial_memory_bytes(self) -> int | None:
        """Memory one trial on this GPU may use: the smallest MIG slice's when MIG is on
        (a process sees one slice), else the whole GPU's."""
        if self.mig_enabled and self.mig_memory_bytes:
            return min(self.mig_memory_bytes)
        return self.memory_total_bytes


def _gpu_from_dict(data: dict[str, Any]) -> GpuInfo:
    """A saved GpuInfo; keys written by a newer tuner are ignored, not fatal."""
    known = {f.name for f in dataclasses.fields(GpuInfo)}
    return GpuInfo(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class HardwareProfile:
    """A machine's trial-relevant capabilities. Peaks are per device."""

    device_type: str  # "cuda" | "cpu"
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    cpu_count: int | None = None
    ram_bytes: int | None = None
    cpu_model: str | None = None
    cpu_capability: str | None = None  # e.g. "AVX2", "AVX512", "AVX512_BF16", "AMX"
    supports_bf16: bool = False
    supports_tf32: bool = False
    supports_fp8: bool = False
    supports_flash_attention: bool = False
    fast_precisions: tuple[str, ...] = ("fp32",)  # precisions worth trying here, fastest first
    peak_tflops: dict[str, float] = field(default_factory=dict)
    memory_bandwidth_bytes_per_s: float | None = None
    peaks_measured: bool = False
    source: str = "unknown"  # "nvml" | "cpu-fallback" | "file:<path>"
    note: str | None = None  # e.g. why the CPU fallback was used
    # Where each number in peak_tflops (and "bandwidth") came from: "datasheet",
    # "measured …" or "estimate …", so nobody mistakes a table value for a measurement.
    peak_sources: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # machine-level field -> reason

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "gpus", tuple(g if isinstance(g, GpuInfo) else _gpu_from_dict(g) for g in self.gpus)
        )
        object.__setattr__(self, "fast_precisions", tuple(self.fast_precisions))

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def memory_bytes(self) -> int | None:
        """Memory one trial process may use: the smallest GPU's total (a MIG slice's with
        MIG on), or host RAM on CPU."""
        if self.device_type == "cuda":
            totals = [g.trial_memory_bytes for g in self.gpus if g.trial_memory_bytes]
            return min(totals) if totals else None
        return self.ram_bytes

    @property
    def memory_used_by_others_bytes(self) -> int | None:
        """The most memory other processes held on one GPU when probed (a trial may land
        on that GPU); None when no GPU could say."""
        used = [g.memory_used_by_others_bytes for g in self.gpus if g.memory_used_by_others_bytes is not None]
        return max(used) if used else None

    @property
    def supported_precisions(self) -> tuple[str, ...]:
        """Precisions that run at all here (fast or not)."""
        if self.device_type == "cpu":
            return ("fp32", "tf32", "bf16", "fp16")  # tf32 is a no-op on CPU
        out = ["fp32", "fp16"]
        if self.supports_tf32:
            out.insert(1, "tf32")
        if self.supports_bf16:
            out.append("bf16")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gpus"] = [dataclasses.asdict(g) for g in self.gpus]
        data["kind"] = "tuner.hardware_profile"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProfile:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_profile(path: str | Path) -> HardwareProfile:
    """Read a profile saved by `tuner probe --json` or a raw NVML readings file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HardwareProfileError(
            FieldProblem("hardware", str(path), "file not found", "run `tuner probe --json > probe.json`")
        ) from None
    except json.JSONDecodeError as exc:
        raise HardwareProfileError(
            FieldProblem(
                "hardware", str(path), f"is not JSON ({exc})", "pass a file written by `tuner probe --json`"
            )
        ) from None
    if not isinstance(data, dict):
        raise HardwareProfileError(
            FieldProblem(
                "hardware", str(path), "is not a JSON object", "pass a file written by `tuner probe --json`"
            )
        )
    if data.get("kind") == "tuner.hardware_profile":
        return HardwareProfile.from_dict(data)
    if "gpus" in data and "driver" in data:
        return profile_from_raw_readings(data, source=f"file:{path}")
    raise HardwareProfileError(
        FieldProblem(
            "hardware",
            str(path),
            "is neither a tuner profile nor raw NVML readings (no 'kind' or 'gpus'/'driver' keys)",
            "pass a file written by `tuner probe --json`",
        )
    )


def _ok(value: Any) -> bool:
    return not (isinstance(value, str) and value.startswith("ERR"))


def _pair(value: Any) -> Any:
    """NVML returns (current, pending) pairs for modes like MIG and ECC."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _architecture(cc: Any, nvml_arch: Any) -> str | None:
    if isinstance(nvml_arch, int) and nvml_arch in NVML_ARCHITECTURES:
        return NVML_ARCHITECTURES[nvml_arch]
    return ARCHITECTURES.get(cc[0]) if cc else None


def _derived_sm_count(cores: Any, cc: Any) -> tuple[int | None, str | None]:
    per_sm = CUDA_CORES_PER_SM.get((cc[0], cc[1])) if cc else None
    if isinstance(cores, int) and per_sm and cores % per_sm == 0:
        return cores // per_sm, f"cuda cores / {per_sm} per SM"
    return None, None


def gpu_from_raw(index: int, raw: dict[str, Any], sm_count: int | None = None) -> GpuInfo:
    """One GPU from the raw readings format (fields the driver refused read 'ERR …').

    `sm_count` is torch's multi_processor_count when known; otherwise it is derived from
    NVML's CUDA core count and the cores per SM of the compute capability.
    """
    unavailable = {
        k: v[3:].strip() or v for k, v in raw.items() if isinstance(v, str) and v.startswith("ERR")
    }

    def get(key: str) -> Any:
        value = raw.get(key)
        return value if _ok(value) else None

    nvlink = raw.get("nvlink") or []
    nvlink_states = [s for s in nvlink if _ok(s)]
    if nvlink and not nvlink_states:
        unavailable["nvlink"] = str(nvlink[0])[3:].strip() or str(nvlink[0])
    cc = get("cc")
    arch_major = get("arch")
    power_mw = get("power_limit_mw")
    mig = _pair(get("mig_mode"))
    ecc = _pair(get("ecc"))
    sm_source = "torch" if sm_count is not None else None
    if sm_count is None:
        sm_count, sm_source = _derived_sm_count(get("num_cores"), cc)
    return GpuInfo(
        index=index,
        name=get("name"),
        uuid=get("uuid"),
        memory_total_bytes=get("memory_total"),
        memory_free_bytes=get("memory_free"),
        compute_capability=tuple(cc) if cc else None,
        architecture=_architecture(cc, arch_major),
        sm_count=sm_count,
        cuda_cores=get("num_cores"),
        max_sm_clock_mhz=get("sm_clock_max"),
        max_mem_clock_mhz=get("mem_clock_max"),
        memory_bus_width_bits=get("mem_bus_width"),
        power_limit_w=power_mw / 1000.0 if power_mw else None,
        pcie_gen=get("pcie_gen"),
        pcie_gen_max=get("pcie_gen_max"),
        pcie_width=get("pcie_width"),
        pcie_width_max=get("pcie_width_max"),
        nvlink_active_links=sum(1 for s in nvlink_states if s in (1, True, "active"))
        if nvlink_states
        else None,
        mig_enabled=bool(mig) if mig is not None else None,
        ecc_enabled=bool(ecc) if ecc is not None else None,
        unavailable=unavailable,
        nvlink_link_states=tuple(int(s) for s in nvlink_states if isinstance(s, (int, bool))),
        pci_bus_id=get("pci_bus_id"),
        sm_count_source=sm_source,
        mig_uuids=tuple(str(d["uuid"]) for d in _mig_devices(raw)),
        mig_memory_bytes=tuple(int(d["memory_total"]) for d in _mig_devices(raw)),
        memory_used_by_others_bytes=get("memory_used_others"),
    )


def _mig_devices(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The MIG devices of a GPU's readings that have both a UUID and a memory size."""
    devices = raw.get("mig_devices")
    if not isinstance(devices, list):
        return []
    return [
        d
        for d in devices
        if isinstance(d, dict) and isinstance(d.get("uuid"), str) and isinstance(d.get("memory_total"), int)
    ]


def nvml_uuid_candidates(torch_uuid: str) -> tuple[str, ...]:
    """NVML UUIDs that torch's `device_properties.uuid` may stand for, most likely first.

    torch prints the bare UUID; NVML prefixes "GPU-" for a whole GPU and "MIG-" for a MIG
    device, and which one torch's device is cannot be told from the UUID itself.
    """
    uuid = torch_uuid.strip()
    if uuid.startswith(("GPU-", "MIG-")):
        return (uuid,)
    return (f"GPU-{uuid}", f"MIG-{uuid}")


def gpu_index_for_uuid(gpus: list[dict[str, Any]] | tuple[GpuInfo, ...], torch_uuid: str | None) -> int | None:
    """Index of the GPU (raw readings or GpuInfo) that torch's UUID names, a MIG slice's
    UUID naming its parent GPU; None when none matches."""
    if not torch_uuid:
        return None
    wanted = set(nvml_uuid_candidates(torch_uuid))
    for index, gpu in enumerate(gpus):
        if isinstance(gpu, GpuInfo):
            uuids = {gpu.uuid, *gpu.mig_uuids}
        else:
            uuids = {gpu.get("uuid"), *(d["uuid"] for d in _mig_devices(gpu))}
        if wanted & uuids:
            return index
    return None


def _datasheet_or_nvml_peaks(
    first: GpuInfo, caps: dict[str, bool]
) -> tuple[dict[str, float], float | None, dict[str, str]]:
    """Peaks of the first GPU from KNOWN_GPUS, else what NVML's clocks imply."""
    model = known_gpu_model(first.name, first.memory_total_bytes)
    table = dict(KNOWN_GPUS[model]) if model is not None else {}
    sources: dict[str, str] = {}
    peaks = {k: v for k, v in table.items() if k != "bw" and (k != "fp8" or caps["supports_fp8"])}
    for key in peaks:
        sources[key] = "datasheet"
    bandwidth = table.get("bw")
    if bandwidth is not None:
        sources["bandwidth"] = "datasheet"
    elif first.max_mem_clock_mhz and first.memory_bus_width_bits:
        # NVML reports half the effective data rate for HBM and GDDR alike, so
        # 2 x clock x bus width reproduces the datasheets (H200: 4.8 TB/s, L4: 300 GB/s).
        bandwidth = 2 * first.max_mem_clock_mhz * 1e6 * first.memory_bus_width_bits / 8
        sources["bandwidth"] = "estimate: 2 x max memory clock x bus width (NVML)"
    if "fp32" not in peaks and first.cuda_cores and first.max_sm_clock_mhz:
        peaks["fp32"] = 2 * first.cuda_cores * first.max_sm_clock_mhz * 1e6 / 1e12  # one FMA per core
        sources["fp32"] = "estimate: 2 x CUDA cores x max SM clock (NVML)"
    return peaks, bandwidth, sources


def _host_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The host part of a readings file (absent in older files: then all None)."""
    host = data.get("host") or {}
    return {
        "cpu_count": host.get("cpu_count"),
        "ram_bytes": host.get("ram_bytes"),
        "cpu_model": host.get("cpu_model"),
        "cpu_capability": host.get("cpu_capability"),
    }


def profile_from_raw_readings(data: dict[str, Any], source: str) -> HardwareProfile:
    """Build a profile from the raw readings format (shared/data/h200/probe.json).

    The probe writes this format and then calls this function, so a saved readings file
    (a real machine's) replays through exactly the code that a live probe runs.
    """
    torch_props = data.get("torch_props") or {}
    raw_gpus = data.get("gpus") or []
    # `--measure` times torch's cuda:0, which need not be NVML's GPU 0 (CUDA numbers
    # fastest first by default, and CUDA_VISIBLE_DEVICES renumbers): its UUID says which
    # GPU the measured peaks (and torch's SM count) belong to.
    measured_on = gpu_index_for_uuid(raw_gpus, data.get("measured_gpu_uuid"))
    reference = measured_on if measured_on is not None else 0
    gpus = tuple(
        gpu_from_raw(i, raw, sm_count=torch_props.get("sm") if i == reference else None)
        for i, raw in enumerate(raw_gpus)
    )
    if not gpus:
        raise HardwareProfileError(
            FieldProblem(
                "gpus", data.get("gpus"), "lists no GPU", "probe a machine with a GPU, or omit --hardware"
            )
        )
    first = gpus[reference]
    caps = cuda_capabilities(first.compute_capability)
    peaks, bandwidth, sources = _datasheet_or_nvml_peaks(first, caps)
    measured = False
    for dtype in ("bf16", "tf32", "fp32", "fp16"):
        value = data.get(f"matmul_{dtype}_tflops")
        if isinstance(value, (int, float)):
            peaks[dtype] = float(value)
            sources[dtype] = "measured: 8192^3 matmul" + (f" on GPU {measured_on}" if measured_on is not None else "")
            measured = True
    if isinstance(data.get("copy_TBps_rw"), (int, float)):
        bandwidth = float(data["copy_TBps_rw"]) * 1e12
        sources["bandwidth"] = "measured: device-to-device copy, read+write bytes"
        measured = True
    if "matmul_bf16_tflops" in data and "matmul_fp16_tflops" not in data:
        peaks["fp16"] = peaks["bf16"]  # same tensor-core rate; use the measured figure
        sources["fp16"] = "assumed equal to the measured bf16 rate"
    fast = ["bf16", "fp16", "tf32", "fp32"] if caps["supports_bf16"] else ["fp16", "fp32"]

    unavailable: dict[str, str] = {}
    driver = data.get("driver")
    if not _ok(driver):
        unavailable["driver"] = str(driver)[3:].strip()
        driver = None
    cuda_driver = data.get("cuda_driver")
    if not _ok(cuda_driver):
        unavailable["cuda_driver"] = str(cuda_driver)[3:].strip()
        cuda_driver = None
    elif isinstance(cuda_driver, int):
        cuda_driver = f"{cuda_driver // 1000}.{(cuda_driver % 1000) // 10}"

    notes = []
    if data.get("measure_error"):
        notes.append(f"peaks not measured: {data['measure_error']}")
    names = {g.name for g in gpus}
    if len(names) > 1:
        notes.append(
            f"GPUs differ ({', '.join(sorted(str(n) for n in names))}): peaks are GPU {reference}'s"
            + (" (the one measured)" if measured_on is not None else "")
        )
    elif measured_on is not None and measured_on != 0:
        notes.append(f"peaks measured on GPU {measured_on} (torch's cuda:0)")
    if data.get("measured_gpu_uuid") and measured_on is None:
        notes.append(
            f"peaks measured on a device whose UUID ({data['measured_gpu_uuid']}) NVML does not list; "
            "they are used for every GPU"
        )
    return HardwareProfile(
        device_type="cuda",
        gpus=gpus,
        driver_version=driver,
        cuda_driver_version=cuda_driver,
        fast_precisions=tuple(fast),
        peak_tflops=peaks,
        memory_bandwidth_bytes_per_s=bandwidth,
        peaks_measured=measured,
        source=source,
        note="; ".join(notes) or None,
        peak_sources=sources,
        unavailable=unavailable,
        **_host_fields(data),
        **caps,
    )
