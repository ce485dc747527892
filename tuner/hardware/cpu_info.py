"""Facts about the host CPU, read from /proc (no torch, no NVML).

Used by the probe for the CPU profile (no GPU) and for the host part of a GPU profile.
Which precisions are *fast* on a CPU is an ISA question: autocast to bf16 runs on any
x86 CPU, but without native bf16 dot products (AVX512_BF16) or AMX tiles it is emulated
and slower than fp32 (on an AVX2-only EPYC we measured bf16 training at ~half the fp32
speed and fp16 at ~1/30), so a search should not spend trials on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO_PATH = Path("/proc/cpuinfo")
MEMINFO_PATH = Path("/proc/meminfo")
# cgroup limits that cap what this process may allocate, below the machine's RAM.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
CPUFREQ_MAX_PATH = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")

# Highest capability first: the first whose flags are all present names the CPU.
_CAPABILITY_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AMX_FP16", ("amx_fp16",)),
    ("AMX_BF16", ("amx_bf16",)),
    ("AVX512_FP16", ("avx512_fp16",)),
    ("AVX512_BF16", ("avx512_bf16",)),
    ("AVX512", ("avx512f",)),
    ("AVX2", ("avx2",)),
    ("AVX", ("avx",)),
    ("SSE4_2", ("sse4_2",)),
)


@dataclass(frozen=True)
class CpuInfo:
    """What /proc says about this machine's CPU and memory."""

    logical_cpus: int
    physical_cores: int | None = None  # SMT siblings share FMA units, so peaks count these
    model: str | None = None
    vendor: str | None = None
    family: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    clock_mhz: float | None = None
    clock_source: str | None = None  # "cpufreq max" | "current /proc/cpuinfo"
    ram_bytes: int | None = None  # MemTotal, capped by a cgroup memory limit if lower
    ram_note: str | None = None


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (blank lines separate them)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _meminfo_total_bytes(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024  # /proc/meminfo counts kB = KiB
    return None


def _cgroup_memory_limit() -> int | None:
    for path in CGROUP_MEMORY_LIMITS:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        # v2 writes "max" when unlimited; v1 writes a huge page-rounded number instead.
        if raw.isdigit() and int(raw) < 2**60:
            return int(raw)
    return None


def read_cpu_info(cpuinfo_path: Path = CPUINFO_PATH, meminfo_path: Path = MEMINFO_PATH) -> CpuInfo:
    """Read the CPU model, ISA flags, cores, clock and RAM of this machine."""
    try:
        blocks = _parse_cpuinfo(cpuinfo_path.read_text())
    except OSError:
        blocks = []
    first = blocks[0] if blocks else {}
    # x86 says "flags", arm64 says "Features".
    flags = frozenset((first.get("flags") or first.get("Features") or "").split())
    cores = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
    family = first.get("cpu family")

    clock_mhz: float | None = None
    clock_source: str | None = None
    try:
        clock_mhz = int(CPUFREQ_MAX_PATH.read_text().strip()) / 1000.0  # file is in kHz
        clock_source = "cpufreq max"
    except (OSError, ValueError):
        try:
            clock_mhz = float(first["cpu MHz"])
            clock_source = "current /proc/cpuinfo"
        except (KeyError, ValueError):
            pass

    try:
        mem_total = _meminfo_total_bytes(meminfo_path.read_text())
    except OSError:
        mem_total = None
    limit = _cgroup_memory_limit()
    ram_note = None
    ram = mem_total
    if limit is not None and (mem_total is None or limit < mem_total):
        ram = limit
        ram_note = f"capped by the cgroup memory limit ({limit} bytes; machine has {mem_total})"

    return CpuInfo(
        logical_cpus=os.cpu_count() or 1,
        physical_cores=len(cores) or None,
        model=first.get("model name"),
        vendor=first.get("vendor_id"),
        family=int(family) if family and family.isdigit() else None,
        flags=flags,
        clock_mhz=clock_mhz,
        clock_source=clock_source,
        ram_bytes=ram,
        ram_note=ram_note,
    )


def cpu_capability(flags: frozenset[str] | set[str]) -> str:
    """The highest vector/matrix ISA level the flags show, e.g. "AVX2" or "AMX_BF16"."""
    for name, needed in _CAPABILITY_LADDER:
        if all(flag in flags for flag in needed):
            return name
    if "asimd" in flags:
        return "SVE" if "sve" in flags else "NEON"
    return "BASELINE"


def fast_cpu_precisions(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """Precisions that train faster than (or as fast as) fp32 on this CPU, fastest first.

    bf16 counts only with native bf16 dot products (avx512_bf16) or AMX bf16 tiles, fp16
    only with avx512_fp16 or AMX fp16; everything else is emulated and slower than fp32.
    """
    fast: list[str] = []
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        fast.append("bf16")
    if "amx_fp16" in flags or "avx512_fp16" in flags:
        fast.append("fp16")
    fast.append("fp32")
    return tuple(fast)


def _fp32_flops_per_cycle(info: CpuInfo) -> tuple[int, str] | None:
    """Peak fp32 FLOPs per core per cycle by ISA: FMA units x lanes x 2 (mul+add)."""
    flags = info.flags
    if "avx512f" in flags:
        # Zen 4 runs 512-bit ops on 256-bit units (double pumped); Intel server cores and
        # Zen 5 (family 26) have two full-width FMA units.
        if info.vendor == "AuthenticAMD" and (info.family or 0) < 26:
            return 32, "AVX-512 on 2x256-bit FMA units"
        return 64, "AVX-512, 2 FMA units"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA, 2 FMA units"
    if "avx" in flags:
        return 16, "AVX, separate add and mul units"
    if "sse2" in flags:
        return 8, "SSE2"
    return None


def estimate_cpu_peak_tflops(info: CpuInfo) -> tuple[dict[str, float], str] | None:
    """An upper-bound estimate of dense matmul TFLOP/s: cores x clock x FLOPs/cycle.

    Returns the peaks and a sentence saying how they were computed, or None when the
    clock or ISA is unknown. Real GEMMs reach a fraction of this (memory, turbo limits,
    hypervisors); `tuner probe --measure` times a real fp32 matmul instead.
    """
    per_cycle = _fp32_flops_per_cycle(info)
    cores = info.physical_cores or info.logical_cpus
    if per_cycle is None or not info.clock_mhz:
        return None
    flops, isa = per_cycle
    ghz = info.clock_mhz / 1000.0
    peaks = {"fp32": cores * ghz * flops / 1000.0}
    if "amx_bf16" in info.flags:
        # One AMX TMUL does 512 bf16 multiply-adds per cycle per core.
        peaks["bf16"] = cores * ghz * 1024 / 1000.0
    elif "avx512_bf16" in info.flags:
        peaks["bf16"] = 2 * peaks["fp32"]  # vdpbf16ps: two bf16 products per fp32 lane
    how = (
        f"estimate (upper bound): {cores} cores x {ghz:.2f} GHz ({info.clock_source}) x "
        f"{flops} fp32 FLOP/cycle ({isa})"
    )
    return peaks, how
