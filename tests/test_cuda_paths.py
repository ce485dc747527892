"""The CUDA paths of issue 17 (defects 1-8), checked on a CPU machine.

Each decision that needs a GPU to act on is a pure function here (which GPU a worker
sees, which device its trials ask for, its environment, which errors break a CUDA
context, which datasheet row a GPU name is, how much memory a trial may use); the real
executor and runner are run with CPU workloads around them. Tests that need CUDA itself
are skipped without it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.shared_data import H200_DIR
from tests.test_runner_failures import RegressionWorkload
from tests.trial_requests import trial_request
from tuner.cli.cmd_probe import format_profile
from tuner.errors import ValidationError
from tuner.executors.local import LocalExecutor
from tuner.executors.worker_env import (
    assign_gpus,
    gpu_sharing_warning,
    trial_device_in_worker,
    worker_environment,
)
from tuner.generator.memory_model import ALLOCATOR_USABLE_FRACTION, usable_memory_bytes
from tuner.generator.planner import plan
from tuner.hardware.gpu_specs import KNOWN_GPUS, known_gpu_model, known_gpu_peaks
from tuner.hardware.probe import used_by_others
from tuner.hardware.profile import (
    HardwareProfile,
    gpu_index_for_uuid,
    load_profile,
    nvml_uuid_candidates,
    profile_from_raw_readings,
)
from tuner.hardware.telemetry import TelemetrySampler
from tuner.space.search_space import SearchSpace
from tuner.trial.cuda_errors import is_sticky_cuda_error
from tuner.trial.guard import run_guarded
from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.oom import is_out_of_memory
from tuner.trial.precision import precision_plan, tf32_override_note
from tuner.trial.progress import TrialProgress
from tuner.trial.runner import run_training_trial, train_on_device
from tuner.trial.timing import StepTimer
from tuner.trial.train_step import apply_optimizer_step
from tuner.trial_request import NullReporter, Reporter, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Workload, WorkloadParam, register_workload

PROBE = H200_DIR / "probe.json"
needs_h200 = pytest.mark.skipif(not PROBE.exists(), reason="shared H200 data not mounted")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GIB = 1024**3

STICKY_MESSAGES = (
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported",
    "CUDA error: unspecified launch failure",
    "NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error",
)


@register_workload
class EnvProbe(Workload):
    """Records what a worker's trial sees (environment, device) and can fail like CUDA."""

    name = "cuda-paths-probe"
    item_unit = "items"
    params = (
        WorkloadParam("out", "str", "", "write what the trial saw here (JSON)"),
        WorkloadParam("raise_message", "str", "", "raise RuntimeError(this) when set"),
        WorkloadParam("fail_reason", "str", "", "return a failed result with this reason when set"),
        WorkloadParam("cuda", "str", "", "'assert': trigger a real device-side assert; 'use': a CUDA op"),
    )

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        params = request.params
        if params["out"]:
            seen = {
                "device": request.device,
                "env": {
                    k: os.environ.get(k)
                    for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
                },
            }
            Path(params["out"]).write_text(json.dumps(seen))
        if params["cuda"] == "assert":
            values = torch.zeros(4, device="cuda")
            values[torch.tensor([1 << 20], device="cuda")] += 1  # out of bounds: device-side assert
            torch.cuda.synchronize()
        if params["cuda"] == "use":
            assert float(torch.ones(8, device="cuda").sum()) == 8.0
        if params["raise_message"]:
            raise RuntimeError(params["raise_message"])
        if params["fail_reason"]:
            return TrialResult.failed(params["fail_reason"])
        return TrialResult(
            status=TrialStatus.OK, items_per_s=1.0, steps_run=1, metrics={"pid": float(os.getpid())}
        )


def probe_request(n: int, **params: Any) -> TrialRequest:
    return TrialRequest(
        n, "cuda-paths-probe", {"out": "", "raise_message": "", "fail_reason": "", "cuda": "", **params}, TrialConfig(), TrialBudget(max_steps=1, warmup_steps=0)
    )


# 1. --device cuda:N ------------------------------------------------------------------------
def test_cuda_n_is_the_parents_nth_visible_gpu_and_the_worker_asks_for_cuda_0() -> None:
    assert assign_gpus(1, "cuda:1", ["2", "3"]) == ["3"]  # not physical GPU 1
    assert assign_gpus(2, "cuda:0", ["2", "3"]) == ["2", "2"]
    assert assign_gpus(1, "cuda:1", ["GPU-aaaa", "MIG-bbbb"]) == ["MIG-bbbb"]
    assert assign_gpus(1, "cuda:1", ["0", "1", "2"]) == ["1"]  # NVML's indices, no parent variable
    assert assign_gpus(1, "cuda:1", []) == ["1"]  # nothing known: the index as given
    assert trial_device_in_worker("cuda:1", "3") == "cuda:0"
    assert trial_device_in_worker("cuda", None) == "cuda"
    assert trial_device_in_worker("auto", "0,1") == "auto"
    with pytest.raises(ValidationError) as info:
        assign_gpus(1, "cuda:2", ["2", "3"])
    problem = info.value.problems[0]
    assert problem.field == "device" and problem.value == "cuda:2" and "cuda:0 .. cuda:1" in problem.fix


def test_a_cuda_n_worker_sees_only_that_gpu_and_not_the_tf32_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    out = tmp_path / "seen.json"
    request = TrialRequest(
        0, "cuda-paths-probe", {"out": str(out), "raise_message": "", "fail_reason": "", "cuda": ""},
        TrialConfig(), TrialBudget(max_steps=1, warmup_steps=0), device="cuda:1",
    )  # fmt: skip
    with LocalExecutor(workers=1, device="cuda:1", trial_timeout_s=60) as executor:
        result = executor.submit(request).result()
    assert result.status == TrialStatus.OK, result.reason
    seen = json.loads(out.read_text())
    assert seen["device"] == "cuda:0"  # the one GPU the worker sees
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "3"  # physical GPU 3 = the parent's cuda:1
    assert seen["env"]["CUDA_DEVICE_ORDER"] is None  # "2,3" mean what they meant to the parent
    assert seen["env"]["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] is None  # fp32 stays fp32
    assert any("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1" in note for note in result.notes)


# 2. the memory meter on an explicit cuda:N -------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine's answer")
def test_device_set_up_and_the_memory_meter_run_inside_the_trial_guard() -> None:
    # On a machine without CUDA every CUDA call of the set-up fails: activating the device,
    # resetting the meter's peak counter. Both must end as a failed result, not escape.
    workload = RegressionWorkload()
    device = torch.device("cuda", 1)
    request = trial_request(workload, TrialConfig(micro_batch_size=4), device="cuda:1")
    result = train_on_device(
        workload, request, NullReporter(), device, precision_plan("fp32", device), started=time.perf_counter()
    )
    assert result.status == TrialStatus.FAILED
    assert result.reason and "CUDA" in result.reason


@needs_cuda
def test_an_explicit_last_cuda_device_trains_and_meters_its_own_memory() -> None:
    index = torch.cuda.device_count() - 1
    workload = RegressionWorkload()
    request = trial_request(
        workload, TrialConfig(micro_batch_size=16), budget=TrialBudget(max_steps=3, warmup_steps=1),
        device=f"cuda:{index}",
    )  # fmt: skip
    result = run_training_trial(workload, request, NullReporter())
    assert result.status == TrialStatus.OK, result.reason
    assert result.peak_memory_bytes and result.peak_memory_bytes > 0
    assert torch.cuda.current_device() == index
    nvml = result.telemetry.get("nvml")
    if nvml is not None and nvml["summary"]["available"]:  # the sampler found this GPU by its UUID
        assert nvml["summary"]["samples"] >= 1


@needs_cuda
def test_measured_peaks_name_an_nvml_gpu() -> None:
    from tuner.hardware.probe import NvmlUnavailableError, collect_readings
    from tuner.trial.measure_peaks import measure_gpu_peaks

    try:
        readings = collect_readings()
    except NvmlUnavailableError:
        pytest.skip("NVML unavailable")
    measured = measure_gpu_peaks(0, size=1024, copy_bytes=1 << 24, target_s=0.02)
    assert gpu_index_for_uuid(readings["gpus"], measured["measured_gpu_uuid"]) is not None


# 3. sticky CUDA errors retire the worker; cuBLAS allocation failures are OOM -----------------
@pytest.mark.parametrize("message", STICKY_MESSAGES)
def test_sticky_cuda_errors_are_recognised(message: str) -> None:
    assert is_sticky_cuda_error(RuntimeError(message))
    assert is_sticky_cuda_error(f"RuntimeError: {message}")  # a failed result's reason
    assert not is_out_of_memory(RuntimeError(message))


def test_ordinary_errors_and_out_of_memory_are_not_sticky() -> None:
    assert not is_sticky_cuda_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_sticky_cuda_error(RuntimeError("CUDA error: out of memory"))
    assert not is_sticky_cuda_error("trial raised ValueError: bad param")


def test_cublas_alloc_failed_is_out_of_memory() -> None:
    exc = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    assert is_out_of_memory(exc)
    assert not is_sticky_cuda_error(exc)


def test_a_sticky_cuda_error_fails_its_trial_and_the_next_trial_runs_in_a_fresh_worker() -> None:
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=60) as executor:
        first = executor.submit(probe_request(0)).result()
        assert first.status == TrialStatus.OK
        old_pid = int(first.metrics["pid"])
        # Raised by the workload (the worker's own guard) ...
        broken = executor.submit(probe_request(1, raise_message=STICKY_MESSAGES[0])).result()
        assert broken.status == TrialStatus.FAILED
        assert "illegal memory access" in (broken.reason or "")
        assert any("fresh one runs the next trial" in note for note in broken.notes)
        after = executor.submit(probe_request(2)).result()
        assert after.status == TrialStatus.OK, after.reason
        new_pid = int(after.metrics["pid"])
        assert new_pid != old_pid
        assert executor.replaced_workers == 1
        # ... or returned as a failed result by the runner's guard.
        runner_failed = executor.submit(probe_request(3, fail_reason="RuntimeError: " + STICKY_MESSAGES[2])).result()
        assert runner_failed.status == TrialStatus.FAILED
        again = executor.submit(probe_request(4)).result()
        assert again.status == TrialStatus.OK and int(again.metrics["pid"]) not in (old_pid, new_pid)
        # An ordinary failure keeps the worker.
        executor.submit(probe_request(5, raise_message="a plain bug")).result()
        assert int(executor.submit(probe_request(6)).result().metrics["pid"]) == int(again.metrics["pid"])
        assert executor.replaced_workers == 2


def test_a_failing_clean_up_after_a_failed_trial_keeps_the_trials_own_error() -> None:
    # After a sticky error even emptying the CUDA cache fails; the trial's error is reported.
    def body() -> TrialResult:
        raise RuntimeError(STICKY_MESSAGES[1])

    def clean_up() -> None:
        raise RuntimeError("CUDA error: device-side assert triggered (while emptying the cache)")

    device = torch.device("cpu")
    result = run_guarded(
        body,
        progress=TrialProgress(item_unit="items", timer=StepTimer(warmup_steps=0, max_seconds=None)),
        meter=MemoryMeter(device),
        device=device,
        started=time.perf_counter(),
        cleanup=clean_up,
    )
    assert result.status == TrialStatus.FAILED
    assert result.reason == f"RuntimeError: {STICKY_MESSAGES[1]}"[:500]


@needs_cuda
def test_a_real_device_side_assert_retires_the_worker_and_the_next_cuda_trial_is_ok() -> None:
    with LocalExecutor(workers=1, device="cuda", trial_timeout_s=120) as executor:
        first = executor.submit(probe_request(0, cuda="use")).result()
        assert first.status == TrialStatus.OK, first.reason
        broken = executor.submit(probe_request(1, cuda="assert")).result()
        assert broken.status == TrialStatus.FAILED and "device-side assert" in (broken.reason or "")
        after = executor.submit(probe_request(2, cuda="use")).result()
        assert after.status == TrialStatus.OK, after.reason
        assert int(after.metrics["pid"]) != int(first.metrics["pid"])


# 4. datasheet peaks per exact model ---------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10G", None),  # not an A10 (nor an A100)
        ("NVIDIA H800", None),
        ("NVIDIA Unlisted Accelerator", None),
    ],
)
def test_gpu_names_match_one_exact_model(name: str, model: str | None) -> None:
    assert known_gpu_model(name) == model


def test_variants_get_their_own_figures_not_the_sxm_ones() -> None:
    sxm = known_gpu_peaks("NVIDIA H100 80GB HBM3")
    assert known_gpu_peaks("NVIDIA H100 PCIe")["bf16"] == 756.0 < sxm["bf16"]
    assert known_gpu_peaks("NVIDIA H100 PCIe")["bw"] == 2.0e12 < sxm["bw"]
    assert known_gpu_peaks("NVIDIA H100 NVL")["bf16"] < sxm["bf16"]
    assert known_gpu_peaks("NVIDIA H200 NVL")["bf16"] < known_gpu_peaks("NVIDIA H200")["bf16"]
    assert known_gpu_peaks("NVIDIA L40")["bf16"] == 181.05  # not the L4's 121
    assert known_gpu_peaks("NVIDIA GH200 480GB", 102 * 10**9)["bw"] == 4.0e12
    assert known_gpu_peaks("NVIDIA GH200 144G HBM3e", 144 * 10**9)["bw"] == 4.9e12
    assert "bw" not in known_gpu_peaks("NVIDIA GH200 480GB")  # size unknown: no guess
    assert known_gpu_peaks("NVIDIA A10G") == {}
    for figures in KNOWN_GPUS.values():  # dense figures: tf32 is half of bf16 where both exist
        if "tf32" in figures and "bf16" in figures and figures is not KNOWN_GPUS["L40"]:
            assert figures["tf32"] == pytest.approx(figures["bf16"] / 2, rel=0.02)


@needs_h200
def test_the_shared_h200_probe_still_resolves_to_the_h200_sxm_figures() -> None:
    raw = json.loads(PROBE.read_text())
    for key in [k for k in raw if k.startswith(("matmul_", "copy_"))]:
        del raw[key]
    profile = profile_from_raw_readings(raw, source="test")
    assert profile.peak_tflops["bf16"] == KNOWN_GPUS["H200 SXM"]["bf16"]
    assert profile.memory_bandwidth_bytes_per_s == 4.8e12
    assert load_profile(PROBE).peak_sources["fp8"] == "datasheet"


@needs_h200
def test_a_pcie_h100_gets_pcie_figures_and_measured_peaks_beat_the_datasheet() -> None:
    raw = json.loads(PROBE.read_text())
    raw["gpus"][0]["name"] = "NVIDIA H100 PCIe"
    measured = copy.deepcopy(raw)
    for key in [k for k in raw if k.startswith(("matmul_", "copy_"))]:
        del raw[key]
    datasheet = profile_from_raw_readings(raw, source="test")
    assert datasheet.peak_tflops["bf16"] == 756.0 and datasheet.memory_bandwidth_bytes_per_s == 2.0e12
    profile = profile_from_raw_readings(measured, source="test")
    assert profile.peak_tflops["bf16"] == measured["matmul_bf16_tflops"]
    assert profile.peak_sources["bf16"].startswith("measured")


# 5. NVML numbering, MIG, the measured GPU -------------------------------------------------
def test_workers_given_nvml_indices_number_gpus_in_pci_order() -> None:
    # No CUDA_VISIBLE_DEVICES in the parent: the ids handed out are NVML's (PCI order).
    env = worker_environment({}, "3")
    assert env.set == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert worker_environment({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, None).set == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert worker_environment({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, None).set == {}
    # The parent's own list: its entries keep the meaning they have under its order.
    assert worker_environment({"CUDA_VISIBLE_DEVICES": "2,3"}, "3").set == {"CUDA_VISIBLE_DEVICES": "3"}
    assert worker_environment({"CUDA_VISIBLE_DEVICES": "MIG-1234"}, "MIG-1234").set == {
        "CUDA_VISIBLE_DEVICES": "MIG-1234"
    }


def test_a_worker_of_a_parent_without_visible_devices_gets_pci_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    out = tmp_path / "seen.json"
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=60) as executor:
        result = executor.submit(probe_request(0, out=str(out))).result()
    assert result.status == TrialStatus.OK, result.reason
    assert json.loads(out.read_text())["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_torch_uuids_may_be_mig_devices_not_only_gpus() -> None:
    assert nvml_uuid_candidates("1b2c-33") == ("GPU-1b2c-33", "MIG-1b2c-33")
    assert nvml_uuid_candidates("MIG-1b2c-33") == ("MIG-1b2c-33",)
    sampler = TelemetrySampler(uuid="GPU-x", alt_uuids=("MIG-x",))
    assert sampler.alt_uuids == ("MIG-x",)


def _two_gpu_readings() -> dict[str, Any]:
    gpu = {
        "memory_total": 24 * GIB, "memory_free": 24 * GIB, "cc": [8, 9], "sm_clock_max": 2040,
        "mem_clock_max": 6251, "mem_bus_width": 192, "num_cores": 7424, "mig_mode": "ERR Not Supported",
    }  # fmt: skip
    return {
        "driver": "580.0",
        "cuda_driver": 13000,
        "gpus": [
            {**gpu, "name": "NVIDIA L4", "uuid": "GPU-aaaa"},
            {**gpu, "name": "NVIDIA L40S", "uuid": "GPU-bbbb", "memory_total": 48 * GIB, "num_cores": 18176},
        ],
        # what `--measure` wrote: torch's cuda:0 (fastest first) was NVML's GPU 1
        "measured_gpu_uuid": "bbbb",
        "torch_props": {"name": "NVIDIA L40S", "sm": 142, "cc": [8, 9]},
        "matmul_bf16_tflops": 300.0,
        "matmul_tf32_tflops": 150.0,
        "matmul_fp32_tflops": 80.0,
    }


def test_measured_peaks_belong_to_the_gpu_torch_measured() -> None:
    profile = profile_from_raw_readings(_two_gpu_readings(), source="test")
    assert profile.peak_tflops["bf16"] == 300.0
    assert profile.peak_sources["bf16"] == "measured: 8192^3 matmul on GPU 1"
    assert profile.peak_tflops["fp8"] == KNOWN_GPUS["L40S"]["fp8"]  # the L40S's datasheet, not the L4's
    assert profile.memory_bandwidth_bytes_per_s == KNOWN_GPUS["L40S"]["bw"]
    assert profile.gpus[1].sm_count == 142 and profile.gpus[1].sm_count_source == "torch"
    assert profile.gpus[0].sm_count_source != "torch"
    assert "peaks are GPU 1's (the one measured)" in (profile.note or "")


def test_a_mig_gpu_offers_a_trial_its_slice_not_the_whole_gpu() -> None:
    readings = _two_gpu_readings()
    readings["gpus"] = readings["gpus"][:1]
    readings["gpus"][0].update(
        mig_mode=[1, 1],
        mig_devices=[{"uuid": "MIG-1111", "memory_total": 10 * GIB}, {"uuid": "MIG-2222", "memory_total": 20 * GIB}],
    )
    del readings["measured_gpu_uuid"]
    profile = profile_from_raw_readings(readings, source="test")
    assert profile.gpus[0].mig_uuids == ("MIG-1111", "MIG-2222")
    assert profile.memory_bytes == 10 * GIB
    assert usable_memory_bytes(profile) < 10 * GIB
    # a measurement on a MIG slice is attributed to its GPU
    readings["measured_gpu_uuid"] = "2222"
    assert profile_from_raw_readings(readings, source="test").peak_sources["bf16"].endswith("on GPU 0")
    # A saved profile keeps the slices, and `tuner probe` shows them.
    assert HardwareProfile.from_dict(profile.to_dict()).memory_bytes == 10 * GIB
    assert "MIG slices of 10.0, 20.0 GiB" in format_profile(profile)


# 6. shared GPUs and memory already in use ---------------------------------------------------
def test_more_workers_than_gpus_is_warned_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    warning = gpu_sharing_warning(4, "auto", ["0", "1"])
    assert warning is not None and "--workers 2" in warning
    assert "--workers 1" in (gpu_sharing_warning(2, "cuda:0", ["0", "1"]) or "")
    assert gpu_sharing_warning(2, "auto", ["0", "1"]) is None
    assert gpu_sharing_warning(4, "cpu", ["0"]) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one "GPU" for two workers
    with LocalExecutor(workers=2, device="auto", trial_timeout_s=60) as executor:
        assert any("--workers 1" in w for w in executor.warnings)


def test_the_probe_does_not_count_its_own_process_as_another() -> None:
    assert used_by_others(10 * GIB, [(111, 3 * GIB), (222, None), (os.getpid(), 2 * GIB)], os.getpid()) == 8 * GIB
    assert used_by_others(GIB, [(os.getpid(), 2 * GIB)], os.getpid()) == 0


@needs_h200
def test_memory_used_by_other_processes_is_not_usable_and_the_generator_says_so() -> None:
    raw = json.loads(PROBE.read_text())
    clean = profile_from_raw_readings(raw, source="test")
    raw["gpus"][0]["memory_used_others"] = 40 * GIB
    shared = profile_from_raw_readings(raw, source="test")
    assert shared.memory_used_by_others_bytes == 40 * GIB
    lost = usable_memory_bytes(clean) - usable_memory_bytes(shared)
    assert lost == pytest.approx(40 * GIB * ALLOCATOR_USABLE_FRACTION, abs=2)
    space = SearchSpace.from_dict(
        {"name": "t", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 64, "log": True}}}
    )
    shape = {"layers": 12, "d": 768, "heads": 12, "seq": 1024, "vocab": 50304, "params": 124475904}
    reasoning = plan(shared, shape, space, workload="gpt").reasoning
    assert any("40.0 GiB was already used on the GPU by other processes" in line for line in reasoning)
    assert not any("other processes" in line for line in plan(clean, shape, space, workload="gpt").reasoning)
    assert "40.0 GiB used by other processes" in format_profile(shared)


# 7. TORCH_ALLOW_TF32_CUBLAS_OVERRIDE ---------------------------------------------------------
def test_the_tf32_override_is_unset_in_workers_and_noted() -> None:
    env = worker_environment({"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}, None)
    assert env.unset == ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",)
    assert env.notes and "fp32 trials ran real fp32" in env.notes[0]
    assert worker_environment({"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "0"}, None).notes == ()
    assert worker_environment({}, None).unset == ()


def test_an_in_process_fp32_cuda_trial_with_the_override_says_it_ran_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}
    assert "ran this fp32 trial's matmuls as TF32" in (tf32_override_note("fp32", "cuda", env) or "")
    assert tf32_override_note("bf16", "cuda", env) is None
    assert tf32_override_note("fp32", "cpu", env) is None
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    assert any("TF32" in n for n in precision_plan("fp32", torch.device("cuda", 0)).notes)


# 8. one host read per fp16 step -------------------------------------------------------------
class CountingScaler(torch.amp.GradScaler):
    """A real GradScaler that counts `get_scale()`, a host sync on a GPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.get_scale_calls = 0

    def get_scale(self) -> float:
        self.get_scale_calls += 1
        return super().get_scale()


def _scaled_backward(model: nn.Module, scaler: torch.amp.GradScaler) -> torch.Tensor:
    x = torch.randn(8, 4)
    loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
    scaler.scale(loss).backward()
    return loss.detach()


def test_a_loss_scaled_step_reads_scale_and_loss_back_once() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = CountingScaler("cpu", init_scale=1024.0, growth_interval=1000)
    loss = _scaled_backward(model, scaler)
    outcome = apply_optimizer_step(optimizer, scaler, loss)
    assert scaler.get_scale_calls == 0  # no separate reads before and after the step
    assert not outcome.skipped and outcome.loss_scale == 1024.0
    assert outcome.loss == pytest.approx(float(loss))
    # An overflowing step is skipped and the scale backs off.
    _scaled_backward(model, scaler)
    next(model.parameters()).grad.fill_(math.inf)
    weights = [p.detach().clone() for p in model.parameters()]
    outcome = apply_optimizer_step(optimizer, scaler)
    assert outcome.skipped and outcome.loss_scale == 512.0 and outcome.loss is None
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    assert scaler.get_scale_calls == 0


def _count_syncs(fn: Any) -> int:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


@needs_cuda
def test_an_fp16_step_adds_one_host_sync_to_what_the_scaler_itself_needs() -> None:
    model = nn.Linear(64, 1).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # what build_optimizer makes
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    x = torch.randn(32, 64, device="cuda")

    def backward() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        return loss.detach()

    for _ in range(2):  # warm up (first calls allocate state)
        apply_optimizer_step(optimizer, scaler, backward())
    backward()

    def bare_step() -> None:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    baseline = _count_syncs(bare_step)  # whatever GradScaler + the optimizer need themselves
    loss = backward()
    ours = _count_syncs(lambda: apply_optimizer_step(optimizer, scaler, loss))
    assert ours <= baseline + 1  # skip, scale and loss come back in one read
