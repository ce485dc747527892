"""The hardware probe: real H200 readings replayed, and the real CPU fallback of this machine."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import H200_DIR
from tuner.cli.main import main
from tuner.errors import ValidationError
from tuner.hardware.cpu_info import (
    cpu_capability,
    estimate_cpu_peak_tflops,
    fast_cpu_precisions,
    read_cpu_info,
)
from tuner.hardware.probe import NvmlUnavailableError, collect_readings, probe
from tuner.hardware.profile import HardwareProfile, load_profile, profile_from_raw_readings

H200 = H200_DIR
PROBE_JSON = H200 / "probe.json"


def _nvml_failure() -> str | None:
    """NVML's own reason for not working here, or None when it works (a GPU machine)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    pynvml.nvmlShutdown()
    return None


NVML_FAILURE = _nvml_failure()


def _parse_nvidia_smi(text: str) -> dict[tuple[str, ...], str]:
    """`nvidia-smi -q` as {(section, …, key): value}, sections from the indentation."""
    values: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("="):
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"^\s*(\S.*?)\s+: (.*)$", line)
        key = match.group(1) if match else line.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), key)
        if match:
            values[path] = match.group(2).strip()
        stack.append((indent, key))
    return values


@pytest.fixture(scope="module")
def smi() -> dict[tuple[str, ...], str]:
    values = _parse_nvidia_smi((H200 / "nvidia-smi.txt").read_text())
    gpu = next(k[0] for k in values if k[0].startswith("GPU "))
    # Drop the "GPU <bus id>" level so keys read like nvidia-smi's sections.
    return {(k[1:] if k[0] == gpu else k): v for k, v in values.items()}


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(PROBE_JSON.read_text())


def test_h200_profile_agrees_with_nvidia_smi(smi: dict, raw: dict) -> None:
    profile = load_profile(PROBE_JSON)
    gpu = profile.gpus[0]
    assert profile.device_type == "cuda" and profile.gpu_count == int(smi[("Attached GPUs",)])
    assert gpu.name == smi[("Product Name",)]
    assert gpu.uuid == smi[("GPU UUID",)]
    assert gpu.architecture == smi[("Product Architecture",)]
    assert profile.driver_version == smi[("Driver Version",)]
    assert profile.cuda_driver_version == smi[("CUDA Version",)]
    total_mib = int(smi[("FB Memory Usage", "Total")].split()[0])
    assert gpu.memory_total_bytes == total_mib * 2**20
    link = ("PCI", "GPU Link Info")
    assert gpu.pcie_gen == int(smi[(*link, "PCIe Generation", "Current")])
    assert gpu.pcie_gen_max == int(smi[(*link, "PCIe Generation", "Max")])
    assert f"{gpu.pcie_width}x" == smi[(*link, "Link Width", "Current")]
    assert f"{gpu.pcie_width_max}x" == smi[(*link, "Link Width", "Max")]
    assert gpu.power_limit_w == float(smi[("GPU Power Readings", "Current Power Limit")].split()[0])
    assert gpu.max_sm_clock_mhz == int(smi[("Max Clocks", "SM")].split()[0])
    assert gpu.max_mem_clock_mhz == int(smi[("Max Clocks", "Memory")].split()[0])
    assert gpu.ecc_enabled is (smi[("ECC Mode", "Current")] == "Enabled")
    assert gpu.mig_enabled is (smi[("MIG Mode", "Current")] == "Enabled")
    # nvidia-smi -q does not print the compute capability; torch's reading in the same file does.
    assert list(gpu.compute_capability) == raw["torch_props"]["cc"]
    assert gpu.sm_count == raw["torch_props"]["sm"] and gpu.sm_count_source == "torch"
    assert profile.supports_bf16 and profile.supports_tf32 and profile.supports_fp8
    assert profile.supports_flash_attention


def test_h200_nvlink_refusal_is_unavailable_not_a_crash(raw: dict) -> None:
    gpu = load_profile(PROBE_JSON).gpus[0]
    assert raw["gpus"][0]["nvlink"][0].startswith("ERR")
    assert gpu.nvlink_active_links is None
    assert gpu.nvlink_link_states == ()
    assert gpu.unavailable["nvlink"] == raw["gpus"][0]["nvlink"][0].removeprefix("ERR ").strip()


def test_h200_measured_peaks_replace_datasheet_values(raw: dict) -> None:
    profile = load_profile(PROBE_JSON)
    assert profile.peaks_measured
    assert profile.peak_tflops["bf16"] == raw["matmul_bf16_tflops"]
    assert profile.peak_tflops["tf32"] == raw["matmul_tf32_tflops"]
    assert profile.peak_tflops["fp32"] == raw["matmul_fp32_tflops"]
    assert profile.memory_bandwidth_bytes_per_s == pytest.approx(raw["copy_TBps_rw"] * 1e12)
    assert profile.peak_sources["bf16"].startswith("measured")
    assert profile.peak_sources["fp8"] == "datasheet"  # not measured in the file
    assert profile.fast_precisions[0] == "bf16"


def test_refused_memory_and_clock_fields_build_a_profile(raw: dict) -> None:
    readings = copy.deepcopy(raw)
    refused = ("memory_total", "memory_free", "sm_clock_max", "mem_clock_max")
    for key in refused:
        readings["gpus"][0][key] = "ERR Not Supported"
    del readings["torch_props"]  # a probe without torch: SM count from the core count
    profile = profile_from_raw_readings(readings, source="test")
    gpu = profile.gpus[0]
    assert gpu.memory_total_bytes is None and gpu.memory_free_bytes is None
    assert gpu.max_sm_clock_mhz is None and gpu.max_mem_clock_mhz is None
    assert set(refused) <= set(gpu.unavailable)
    assert all(gpu.unavailable[k] == "Not Supported" for k in refused)
    assert profile.memory_bytes is None
    assert gpu.sm_count == raw["torch_props"]["sm"]  # 16896 cores / 128 per SM on Hopper
    assert gpu.sm_count_source.startswith("cuda cores")
    assert gpu.pcie_gen == raw["gpus"][0]["pcie_gen"]  # other fields unaffected

    from tuner.cli.cmd_probe import format_profile

    table = format_profile(profile)
    assert re.search(r"memory\s+unavailable \(Not Supported\)", table)
    assert re.search(r"max clocks\s+unavailable \(Not Supported\)", table)


def test_refused_driver_version_is_listed_as_unavailable(raw: dict) -> None:
    readings = copy.deepcopy(raw)
    readings["driver"] = "ERR Insufficient Permissions"
    readings["cuda_driver"] = "ERR Insufficient Permissions"
    profile = profile_from_raw_readings(readings, source="test")
    assert profile.driver_version is None and profile.cuda_driver_version is None
    assert profile.unavailable == {
        "driver": "Insufficient Permissions",
        "cuda_driver": "Insufficient Permissions",
    }


def test_unknown_gpu_gets_peaks_from_its_own_clocks(raw: dict) -> None:
    readings = copy.deepcopy(raw)
    for key in [k for k in readings if k.startswith(("matmul_", "copy_"))]:
        del readings[key]
    readings["gpus"][0]["name"] = "NVIDIA Unlisted Accelerator"
    profile = profile_from_raw_readings(readings, source="test")
    # The NVML formulas reproduce the H200 datasheet (4.8 TB/s, 67 TFLOP/s fp32) within 1 %.
    assert profile.memory_bandwidth_bytes_per_s == pytest.approx(4.8e12, rel=0.01)
    assert profile.peak_tflops["fp32"] == pytest.approx(67.0, rel=0.01)
    assert "bf16" not in profile.peak_tflops  # tensor-core rates cannot be derived
    assert profile.peak_sources["bandwidth"].startswith("estimate")
    assert not profile.peaks_measured


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _proc_mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def test_probe_on_this_machine() -> None:
    profile = probe()
    assert profile.cpu_count == os.cpu_count()
    assert 0 < profile.ram_bytes <= _proc_mem_total()
    if NVML_FAILURE is None:  # a GPU machine: NVML's view, plus the host
        import pynvml

        pynvml.nvmlInit()
        try:
            assert profile.gpu_count == pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        assert profile.device_type == "cuda" and profile.source == "nvml"
        return
    flags = _proc_flags()
    expected = (
        (["bf16"] if {"avx512_bf16", "amx_bf16"} & flags else [])
        + (["fp16"] if {"avx512_fp16", "amx_fp16"} & flags else [])
        + ["fp32"]
    )
    assert profile.device_type == "cpu" and profile.source == "cpu-fallback"
    assert profile.fast_precisions == tuple(expected)
    assert profile.note == f"NVML unavailable ({NVML_FAILURE}): using the CPU profile"
    assert profile.supports_bf16 and not profile.supports_tf32
    if "avx2" in flags and "avx512f" not in flags:
        assert profile.cpu_capability == "AVX2"
    if profile.peak_tflops:
        assert profile.peak_sources["fp32"].startswith("estimate")


def test_collect_readings_without_nvml_raises_with_nvmls_reason() -> None:
    if NVML_FAILURE is None:
        readings = collect_readings()
        assert readings["gpus"] and readings["host"]["cpu_count"] == os.cpu_count()
        return
    with pytest.raises(NvmlUnavailableError) as info:
        collect_readings()
    assert info.value.reason == NVML_FAILURE


def test_measured_cpu_peaks() -> None:
    if NVML_FAILURE is None:
        pytest.skip("GPU machine: --measure times the GPU (8192^3 matmuls), not this test's job")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # robust timing on shared cores; the source names the thread count
    try:
        profile = probe(measure=True)
    finally:
        torch.set_num_threads(before)
    assert profile.peaks_measured
    assert "1 threads" in profile.peak_sources["fp32"]
    assert profile.peak_tflops["fp32"] > 0
    assert profile.peak_sources["fp32"].startswith("measured")
    assert profile.memory_bandwidth_bytes_per_s > 0


def test_cpu_isa_rules() -> None:
    assert cpu_capability({"avx", "avx2", "fma"}) == "AVX2"
    assert cpu_capability({"avx2", "avx512f", "avx512_bf16"}) == "AVX512_BF16"
    assert cpu_capability({"avx512f", "amx_bf16", "avx512_bf16"}) == "AMX_BF16"
    assert fast_cpu_precisions(frozenset({"avx2", "avx512f"})) == ("fp32",)
    assert fast_cpu_precisions(frozenset({"avx512_bf16"})) == ("bf16", "fp32")
    assert fast_cpu_precisions(frozenset({"amx_bf16", "amx_fp16"})) == ("bf16", "fp16", "fp32")
    info = read_cpu_info()
    estimate = estimate_cpu_peak_tflops(info)
    if estimate is not None and "avx2" in info.flags and "fma" in info.flags and "avx512f" not in info.flags:
        cores = info.physical_cores or info.logical_cpus
        assert estimate[0]["fp32"] == pytest.approx(cores * info.clock_mhz / 1000 * 32 / 1000)


def test_cli_renders_the_h200_readings(capsys: pytest.CaptureFixture[str], raw: dict) -> None:
    assert main(["probe", "--readings", str(PROBE_JSON)]) == 0
    table = capsys.readouterr().out
    assert "NVIDIA H200" in table
    assert f"{raw['gpus'][0]['memory_total'] / 2**30:.1f} GiB" in table  # 140.4 GiB = "141 GB" class
    assert re.search(r"compute cap\.\s+9\.0", table)
    assert "Gen5 x16" in table
    assert re.search(r"NVLink\s+unavailable \(Not Supported\)", table)
    assert re.search(r"MIG\s+disabled", table) and re.search(r"ECC\s+enabled", table)
    assert "580.159.04" in table and "CUDA driver 13.0" in table


def test_cli_json_on_this_machine_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    assert main(["probe", "--json", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    printed_path = tmp_path / "printed.json"
    printed_path.write_text(json.dumps(printed))
    loaded = load_profile(printed_path)
    assert isinstance(loaded, HardwareProfile)
    assert loaded == load_profile(out)
    assert loaded.cpu_count == os.cpu_count()
    assert json.loads(json.dumps(loaded.to_dict())) == printed


def test_cli_rejects_measure_with_readings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--readings", str(PROBE_JSON), "--measure"]) == 2
    assert "--measure" in capsys.readouterr().err


def test_probe_command_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import argparse, sys\n"
        "import tuner.hardware.probe, tuner.hardware.telemetry\n"
        "assert 'pynvml' not in sys.modules, 'pynvml must load lazily'\n"
        "from tuner.cli import cmd_probe\n"
        "parser = argparse.ArgumentParser(); sub = parser.add_subparsers()\n"
        "cmd_probe.register(sub)\n"
        f"args = parser.parse_args(['probe', '--output', {str(tmp_path / 'p.json')!r}])\n"
        "assert cmd_probe.run(args) == 0\n"
        "import tuner.hardware.telemetry\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_load_profile_rejects_a_file_that_is_no_profile(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValidationError) as info:
        load_profile(bad)
    assert info.value.problems[0].field == "hardware"
