"""`tuner probe`: show (or save) what this machine's GPUs or CPU can do.

Imports neither torch nor pynvml at module level; torch loads only with --measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError

if TYPE_CHECKING:
    from tuner.hardware.profile import GpuInfo, HardwareProfile


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="show the hardware profile (GPUs via NVML, else the CPU)",
        description=(
            "Probe this machine's GPUs through NVML (or the CPU when there is none) and print "
            "its hardware profile: memory, compute capability, clocks, PCIe, NVLink, MIG, ECC, "
            "precisions worth trying and peak TFLOP/s. Save it with --output and pass it to "
            "other commands with --hardware FILE."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.add_argument("--output", metavar="FILE", help="also save the profile as JSON to FILE")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="time real matmuls and a memory copy (imports torch; a few seconds) instead of datasheet peaks",
    )
    parser.add_argument(
        "--readings",
        metavar="FILE",
        help="render a saved profile or raw NVML readings file (e.g. shared/data/h200/probe.json) "
        "instead of probing this machine",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tuner.hardware.profile import load_profile

    if args.readings and args.measure:
        raise ValidationError(
            FieldProblem(
                "--measure",
                True,
                "cannot measure a saved file",
                "drop --measure, or probe this machine without --readings",
            )
        )
    if args.readings:
        profile = load_profile(args.readings)
    else:
        from tuner.hardware.probe import probe

        profile = probe(measure=args.measure)
    if args.output:
        profile.save(args.output)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        print(format_profile(profile))
        if args.output:
            print(f"saved to {args.output}", file=sys.stderr)
    return 0


def _bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    return f"{value / 2**30:.1f} GiB ({value / 1e9:.1f} GB)"


def _field(gpu: GpuInfo, raw_keys: tuple[str, ...], text: str | None) -> str:
    """`text`, or "unavailable (why)" when NVML refused one of the raw fields behind it."""
    for key in raw_keys:
        if key in gpu.unavailable:
            return f"unavailable ({gpu.unavailable[key]})"
    return text if text is not None else "unknown"


def _on_off(value: bool | None) -> str | None:
    return None if value is None else ("enabled" if value else "disabled")


def _gpu_lines(gpu: GpuInfo) -> list[str]:
    cc = gpu.compute_capability
    memory = None
    if gpu.memory_total_bytes is not None:
        memory = f"{_bytes(gpu.memory_total_bytes)} total"
        if gpu.memory_free_bytes is not None:
            memory += f", {gpu.memory_free_bytes / 2**30:.1f} GiB free"
        if gpu.memory_used_by_others_bytes:
            memory += f", {gpu.memory_used_by_others_bytes / 2**30:.1f} GiB used by other processes"
        if gpu.mig_enabled and gpu.mig_memory_bytes:
            slices = ", ".join(f"{m / 2**30:.1f}" for m in gpu.mig_memory_bytes)
            memory += f"; MIG slices of {slices} GiB (a trial gets one)"
    sms = None
    if gpu.sm_count is not None or gpu.cuda_cores is not None:
        sms = f"{gpu.sm_count if gpu.sm_count is not None else '?'}"
        if gpu.cuda_cores is not None:
            sms += f" ({gpu.cuda_cores} CUDA cores)"
    clocks = None
    if gpu.max_sm_clock_mhz is not None or gpu.max_mem_clock_mhz is not None:
        clocks = f"SM {gpu.max_sm_clock_mhz or '?'} MHz, memory {gpu.max_mem_clock_mhz or '?'} MHz"
    pcie = None
    if gpu.pcie_gen is not None or gpu.pcie_width is not None:
        pcie = f"Gen{gpu.pcie_gen or '?'} x{gpu.pcie_width or '?'}"
        if gpu.pcie_gen_max is not None or gpu.pcie_width_max is not None:
            pcie += f" (max Gen{gpu.pcie_gen_max or '?'} x{gpu.pcie_width_max or '?'})"
        if gpu.pcie_peak_bytes_per_s:
            pcie += f", peak {gpu.pcie_peak_bytes_per_s / 1e9:.1f} GB/s each way"
    nvlink = None
    if gpu.nvlink_link_states:
        nvlink = f"{gpu.nvlink_active_links or 0} of {len(gpu.nvlink_link_states)} links active"
    rows = [
        ("memory", ("memory_total",), memory),
        ("compute cap.", ("cc",), f"{cc[0]}.{cc[1]}" if cc else None),
        ("architecture", ("arch", "cc"), gpu.architecture),
        ("SMs", ("num_cores",) if gpu.sm_count is None else (), sms),
        ("max clocks", ("sm_clock_max", "mem_clock_max"), clocks),
        (
            "memory bus",
            ("mem_bus_width",),
            f"{gpu.memory_bus_width_bits}-bit" if gpu.memory_bus_width_bits else None,
        ),
        ("power limit", ("power_limit_mw",), f"{gpu.power_limit_w:.0f} W" if gpu.power_limit_w else None),
        ("PCIe", ("pcie_gen", "pcie_width"), pcie),
        ("NVLink", ("nvlink",), nvlink),
        ("MIG", ("mig_mode",), _on_off(gpu.mig_enabled)),
        ("ECC", ("ecc",), _on_off(gpu.ecc_enabled)),
        ("UUID", ("uuid",), gpu.uuid),
    ]
    name = _field(gpu, ("name", "handle"), gpu.name)
    lines = [f"GPU {gpu.index}: {name}"]
    lines += [f"  {label:<14} {_field(gpu, keys, text)}" for label, keys, text in rows]
    return lines


def _tflops(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def format_profile(profile: HardwareProfile) -> str:
    """The readable table `tuner probe` prints."""
    lines = [f"hardware profile ({profile.device_type}, source: {profile.source})"]
    if profile.device_type == "cuda":
        driver = profile.driver_version or f"unavailable ({profile.unavailable.get('driver', 'unknown')})"
        cuda = (
            profile.cuda_driver_version
            or f"unavailable ({profile.unavailable.get('cuda_driver', 'unknown')})"
        )
        lines.append(f"  driver {driver}, CUDA driver {cuda}, {profile.gpu_count} GPU(s)")
    host = [
        profile.cpu_model or "CPU model unknown",
        f"{profile.cpu_count} logical CPUs" if profile.cpu_count else None,
        f"{profile.ram_bytes / 2**30:.1f} GiB RAM" if profile.ram_bytes else None,
        profile.cpu_capability,
    ]
    if any(host[1:]) or profile.cpu_model:
        lines.append("  host: " + ", ".join(h for h in host if h))
    for gpu in profile.gpus:
        lines += _gpu_lines(gpu)
    caps = [
        "bf16 "
        + (
            ("yes" if "bf16" in profile.fast_precisions else "runs, but slower than fp32 here")
            if profile.supports_bf16
            else "no"
        ),
        f"tf32 {'yes' if profile.supports_tf32 else 'no'}",
        f"fp8 {'yes' if profile.supports_fp8 else 'no'}",
        f"flash attention {'yes' if profile.supports_flash_attention else 'no'}",
    ]
    lines.append(f"precisions: fast {', '.join(profile.fast_precisions)} (fastest first); " + ", ".join(caps))
    if profile.peak_tflops:
        lines.append("peaks (per device):")
        for dtype, value in profile.peak_tflops.items():
            source = profile.peak_sources.get(dtype, "")
            lines.append(f"  {dtype:<6} {_tflops(value):>8} TFLOP/s  {source}")
    else:
        lines.append("peaks: unknown")
    if profile.memory_bandwidth_bytes_per_s:
        lines.append(
            f"  memory {profile.memory_bandwidth_bytes_per_s / 1e12:>8.3g} TB/s     "
            f"{profile.peak_sources.get('bandwidth', '')}"
        )
    for key, why in profile.unavailable.items():
        lines.append(f"  {key}: unavailable ({why})")
    if profile.note:
        lines.append(f"note: {profile.note}")
    return "\n".join(lines)
