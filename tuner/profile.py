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

# Dense peak TFLOP/s per device and memory bandwidth (bytes/s) of known GPUs, from vendor
# datasheets (SXM parts). Keys are matched as substrings of the NVML name, longest first.
KNOWN_GPUS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "fp8": 1979.0, "bw": 4.8e12},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "fp8": 1979.0, "bw": 3.35e12},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "bw": 2.0e12},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6, "fp8": 733.0, "bw": 0.864e12},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3, "fp8": 242.0, "bw": 0.3e12},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2, "bw": 0.6e12},
    "V100": {"fp16": 125.0, "fp32": 15.7, "bw": 0.9e12},
    "T4": {"fp16": 65.0, "fp32": 8.1, "bw": 0.32e12},
}

ARCHITECTURES: dict[int, str] = {
    7: "Volta/Turing",
    8: "Ampere/Ada",
    9: "Hopper",
    10: "Blackwell",
    12: "Blackwell",
}


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
    unavailable: dict[str, str] = field(default_factory=dict)  # field -> what the driver said

    def __post_init__(self) -> None:
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(self.compute_capability))


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

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "gpus", tuple(g if isinstance(g, GpuInfo) else GpuInfo(**g) for g in self.gpus)
        )
        object.__setattr__(self, "fast_precisions", tuple(self.fast_precisions))

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def memory_bytes(self) -> int | None:
        """Memory one trial process may use: the smallest GPU's total, or host RAM on CPU."""
        if self.device_type == "cuda":
            totals = [g.memory_total_bytes for g in self.gpus if g.memory_total_bytes]
            return min(totals) if totals else None
        return self.ram_bytes

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


def gpu_from_raw(index: int, raw: dict[str, Any], sm_count: int | None = None) -> GpuInfo:
    """One GPU from the raw readings format (fields the driver refused read 'ERR …')."""
    unavailable = {k: v for k, v in raw.items() if isinstance(v, str) and v.startswith("ERR")}

    def get(key: str) -> Any:
        value = raw.get(key)
        return value if _ok(value) else None

    nvlink = raw.get("nvlink") or []
    nvlink_states = [s for s in nvlink if _ok(s)]
    if nvlink and not nvlink_states:
        unavailable["nvlink"] = str(nvlink[0])
    cc = get("cc")
    arch_major = get("arch")
    power_mw = get("power_limit_mw")
    mig = _pair(get("mig_mode"))
    ecc = _pair(get("ecc"))
    return GpuInfo(
        index=index,
        name=get("name"),
        uuid=get("uuid"),
        memory_total_bytes=get("memory_total"),
        memory_free_bytes=get("memory_free"),
        compute_capability=tuple(cc) if cc else None,
        architecture=ARCHITECTURES.get(cc[0] if cc else arch_major or -1),
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
    )


def known_gpu_peaks(name: str | None) -> dict[str, float]:
    if not name:
        return {}
    for key in sorted(KNOWN_GPUS, key=len, reverse=True):
        if key in name:
            return dict(KNOWN_GPUS[key])
    return {}


def cuda_capabilities(cc: tuple[int, int] | None) -> dict[str, bool]:
    major_minor = (cc[0], cc[1]) if cc else (0, 0)
    return {
        "supports_bf16": major_minor >= (8, 0),
        "supports_tf32": major_minor >= (8, 0),
        "supports_fp8": major_minor >= (8, 9),
        "supports_flash_attention": major_minor >= (8, 0),
    }


def profile_from_raw_readings(data: dict[str, Any], source: str) -> HardwareProfile:
    """Build a profile from the raw readings format (shared/data/h200/probe.json)."""
    torch_props = data.get("torch_props") or {}
    gpus = tuple(
        gpu_from_raw(i, raw, sm_count=torch_props.get("sm") if i == 0 else None)
        for i, raw in enumerate(data.get("gpus") or [])
    )
    if not gpus:
        raise HardwareProfileError(
            FieldProblem(
                "gpus", data.get("gpus"), "lists no GPU", "probe a machine with a GPU, or omit --hardware"
            )
        )
    first = gpus[0]
    caps = cuda_capabilities(first.compute_capability)
    table = known_gpu_peaks(first.name)
    peaks = {k: v for k, v in table.items() if k != "bw"}
    measured = False
    for dtype in ("bf16", "tf32", "fp32", "fp16"):
        value = data.get(f"matmul_{dtype}_tflops")
        if isinstance(value, (int, float)):
            peaks[dtype] = float(value)
            measured = True
    bandwidth = table.get("bw")
    if isinstance(data.get("copy_TBps_rw"), (int, float)):
        bandwidth = float(data["copy_TBps_rw"]) * 1e12
        measured = True
    if "matmul_bf16_tflops" in data and "matmul_fp16_tflops" not in data:
        peaks["fp16"] = peaks["bf16"]  # same tensor-core rate; use the measured figure
    fast = ["bf16", "fp16", "tf32", "fp32"] if caps["supports_bf16"] else ["fp16", "fp32"]
    cuda_driver = data.get("cuda_driver")
    if isinstance(cuda_driver, int):
        cuda_driver = f"{cuda_driver // 1000}.{(cuda_driver % 1000) // 10}"
    return HardwareProfile(
        device_type="cuda",
        gpus=gpus,
        driver_version=data.get("driver") if _ok(data.get("driver")) else None,
        cuda_driver_version=cuda_driver,
        fast_precisions=tuple(fast),
        peak_tflops=peaks,
        memory_bandwidth_bytes_per_s=bandwidth,
        peaks_measured=measured,
        source=source,
        **caps,
    )
