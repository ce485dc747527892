"""The GPU check's steps; each runs in its own process, started by `benchmarks.gpu_check`.

    python -m benchmarks.gpu_check.steps STEP CONTEXT_JSON

A step writes OUT/steps/STEP.json (a `StepRecord`: figures, checks, errors, notes) and
exits 0 even when a check fails; the orchestrator kills it at its time cap. Steps that
need the results of an earlier one (the study's best config) read its JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.common import (
    REPO,
    Context,
    StepRecord,
    find_key,
    finite,
    gpt_params,
    nvidia_smi_gpus,
    nvml_used_bytes,
    read_step,
    run_command,
    tuner_cli,
)
from benchmarks.gpu_check.context_step import step_cuda_context
from benchmarks.gpu_check.fidelity_core import tuner_trial
from benchmarks.gpu_check.inference_step import step_inference

GIB = 1024**3
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


# -- shared helpers ------------------------------------------------------------------------


def request_for(
    workload: str,
    params: dict[str, Any],
    config: dict[str, Any],
    *,
    device: str,
    steps: int,
    warmup: int,
    number: int,
) -> Any:
    from tuner.trial_request import TrialRequest
    from tuner.types import TrialBudget, TrialConfig
    from tuner.workloads import get_workload

    return TrialRequest(
        trial_number=number,
        workload=workload,
        params=get_workload(workload).resolve_params(params),
        config=TrialConfig.from_dict(config),
        budget=TrialBudget(max_steps=steps, warmup_steps=warmup, eval_batches=1),
        device=device,
    )


def brief(result: Any) -> dict[str, Any]:
    """The parts of a TrialResult the summary keeps."""
    return {
        "status": result.status.value,
        "items_per_s": result.items_per_s,
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_kind": result.memory_kind,
        "mfu": result.mfu,
        "reason": result.reason,
        "loss_curve": list(result.loss_curve),
        "notes": list(result.notes)[:6],
    }


def probe_profile(ctx: Context, *, measured: bool = True) -> dict[str, Any] | None:
    """The hardware profile the probe step saved (measured, or datasheet), else None."""
    path = ctx.out_path / ("probe_measured.json" if measured else "probe.json")
    return json.loads(path.read_text()) if path.exists() else None


def peak_for(ctx: Context, precision: str) -> float | None:
    """Peak FLOP/s as a study gets it (`tuner probe` without --measure, `trial_peak_flops`):
    an upper bound, so MFU above 1 means a wrong count, not a slow peak measurement."""
    from tuner.hardware.profile import HardwareProfile
    from tuner.study.hardware_plan import trial_peak_flops
    from tuner.types import TrialConfig

    data = probe_profile(ctx, measured=False)
    profile = HardwareProfile.from_dict(data) if data else None
    return trial_peak_flops(profile, TrialConfig(precision=precision), ctx.trial_device)


def study_configs(
    ctx: Context, record: StepRecord
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(best config, default config, the study's outcome) from the study step, or fallbacks."""
    study = read_step(ctx, "study")
    outcome = (study or {}).get("figures", {}).get("outcome")
    if outcome and outcome.get("best_config") and outcome.get("baseline_config"):
        return outcome["best_config"], outcome["baseline_config"], outcome
    record.notes.append("the study step gave no best config; using fixed stand-ins for best and default")
    default = {"micro_batch_size": 8, "max_sequence_length": 128, "precision": "fp32", "learning_rate": 1e-3}
    best = (
        {"micro_batch_size": 16, "max_sequence_length": 1024, "precision": "bf16", "learning_rate": 1e-3}
        if ctx.gpu
        else {"micro_batch_size": 32, "max_sequence_length": 128, "precision": "fp32", "learning_rate": 1e-3}
    )
    return best, default, None


def quick_config(ctx: Context, **changes: Any) -> dict[str, Any]:
    base = (
        {"micro_batch_size": 8, "max_sequence_length": 512, "precision": "bf16"}
        if ctx.gpu
        else {"micro_batch_size": 8, "max_sequence_length": 64, "precision": "fp32"}
    )
    return {**base, "learning_rate": 1e-3, **changes}


# -- steps ---------------------------------------------------------------------------------


def step_env(ctx: Context, record: StepRecord) -> None:
    """Interpreter, torch, GPUs, TF32 override variables, and the compiler torch.compile needs."""
    import shutil
    import subprocess

    import torch

    fig = record.figures
    fig["python"] = sys.version.split()[0]
    fig["executable"] = sys.executable
    fig["torch"] = torch.__version__
    fig["torch_cuda"] = torch.version.cuda
    fig["cuda_available"] = torch.cuda.is_available()
    fig["cuda_device_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    fig["env"] = {
        k: os.environ.get(k)
        for k in (
            "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER",
            "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
            "NVIDIA_TF32_OVERRIDE",
        )
    }
    fig["nvidia_smi"] = nvidia_smi_gpus()
    try:
        import pynvml  # noqa: F401

        fig["pynvml"] = True
    except ImportError:
        fig["pynvml"] = False
    # torch.compile's Triton launcher (GPU) and Inductor's C++ kernels (CPU) compile C at
    # run time: a C compiler and Python's headers must exist.
    compiler = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    include = sysconfig.get_paths().get("include", "")
    headers = Path(include, "Python.h").exists()
    fig.update(c_compiler=compiler and shutil.which(compiler), python_include=include)
    compiled = False
    if compiler and headers:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp, "probe.c")
            source.write_text("#include <Python.h>\nint main(void) { return Py_IsInitialized(); }\n")
            proc = subprocess.run(
                [compiler, "-fsyntax-only", f"-I{include}", str(source)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            compiled = proc.returncode == 0
            if not compiled:
                record.errors.append(f"{compiler} could not compile against Python.h: {proc.stderr[-300:]}")
    record.check("c_compiler_present", compiler is not None, str(compiler))
    record.check("python_headers_present", headers, include)
    record.check("compiles_against_python_h", compiled)
    if ctx.gpu:
        record.check(
            "cuda_available", fig["cuda_available"], f"torch {torch.__version__} cuda {torch.version.cuda}"
        )
        record.check("nvidia_smi_lists_gpus", bool(fig["nvidia_smi"]), str(fig["nvidia_smi"]))
        record.check("pynvml_importable", fig["pynvml"])
        override = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
        if override not in (None, "", "0"):
            record.notes.append(
                f"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={override}: 'fp32' matmuls may run as TF32"
            )


def step_probe(ctx: Context, record: StepRecord) -> None:
    """`tuner probe` (datasheet) and `tuner probe --measure`: peaks, ordering, below datasheet."""
    datasheet_path = ctx.out_path / "probe.json"
    measured_path = ctx.out_path / "probe_measured.json"
    plain = run_command(tuner_cli("probe", "--json", "--output", str(datasheet_path)), timeout_s=20)
    measured = run_command(
        tuner_cli("probe", "--measure", "--json", "--output", str(measured_path)),
        timeout_s=35 if ctx.gpu else 20,
    )
    record.figures["probe_s"] = plain["seconds"]
    record.figures["probe_measure_s"] = measured["seconds"]
    for label, run in (("probe", plain), ("probe --measure", measured)):
        if not record.check(f"{label} exits 0", run["rc"] == 0, run["stderr"][-300:]):
            return
    sheet = json.loads(datasheet_path.read_text())
    meas = json.loads(measured_path.read_text())
    record.figures.update(
        device_type=meas.get("device_type"),
        gpus=[
            {
                k: g.get(k)
                for k in (
                    "index",
                    "name",
                    "uuid",
                    "memory_total_bytes",
                    "mig_enabled",
                    "pci_bus_id",
                    "power_limit_w",
                )
            }
            for g in meas.get("gpus", [])
        ],
        datasheet_tflops=sheet.get("peak_tflops"),
        measured_tflops=meas.get("peak_tflops"),
        memory_bandwidth_bytes_per_s=meas.get("memory_bandwidth_bytes_per_s"),
        datasheet_bandwidth_bytes_per_s=sheet.get("memory_bandwidth_bytes_per_s"),
        peak_sources=meas.get("peak_sources"),
        note=meas.get("note"),
        peaks_measured=meas.get("peaks_measured"),
    )
    record.check("peaks_measured", bool(meas.get("peaks_measured")), str(meas.get("note")))
    peaks = meas.get("peak_tflops") or {}
    if ctx.gpu:
        record.check("device_type_cuda", meas.get("device_type") == "cuda", str(meas.get("device_type")))
        bf16, tf32, fp32 = (peaks.get(p) for p in ("bf16", "tf32", "fp32"))
        record.check(
            "measured bf16 > tf32 > fp32",
            None not in (bf16, tf32, fp32) and bf16 > tf32 > fp32,
            f"bf16 {bf16} tf32 {tf32} fp32 {fp32} TFLOP/s",
        )
        for precision, value in peaks.items():
            sheet_value = (sheet.get("peak_tflops") or {}).get(precision)
            if sheet_value and value:
                record.check(
                    f"measured {precision} below datasheet",
                    value < sheet_value,
                    f"{value:.1f} vs datasheet {sheet_value:.1f} TFLOP/s",
                )
        bw, sheet_bw = meas.get("memory_bandwidth_bytes_per_s"), sheet.get("memory_bandwidth_bytes_per_s")
        if bw and sheet_bw:
            record.check(
                "measured bandwidth below datasheet",
                bw < sheet_bw,
                f"{bw / 1e12:.2f} vs {sheet_bw / 1e12:.2f} TB/s",
            )
    else:
        record.check("measured fp32 > 0", (peaks.get("fp32") or 0) > 0, str(peaks))


def step_telemetry(ctx: Context, record: StepRecord) -> None:
    """A 2 s NVML sample of GPU 0 while it runs matmuls: samples arrive and name the GPU."""
    import torch

    from tuner.hardware.telemetry import TelemetrySampler, telemetry_for_device

    a = torch.randn(4096, 4096, device="cuda:0")
    sampler = telemetry_for_device("cuda:0", interval_s=0.1)
    if not record.check("sampler for cuda:0", isinstance(sampler, TelemetrySampler)):
        return
    began = time.perf_counter()
    with sampler:
        while time.perf_counter() - began < 2.0:
            (a @ a).sum().item()
    summary = sampler.summary()
    record.figures["summary"] = summary
    record.figures["sampler_uuid"] = sampler.uuid
    record.check("nvml available", sampler.available, str(sampler.reason))
    record.check(">= 10 samples in 2 s", summary.get("samples", 0) >= 10, str(summary.get("samples")))
    util = ((summary.get("metrics") or {}).get("util_gpu") or {}).get("max")
    record.check("GPU busy while sampled", (util or 0) > 0, f"util_gpu max {util}")
    smi = nvidia_smi_gpus() or []
    if sampler.uuid is not None and smi:
        record.check(
            "sampler UUID == nvidia-smi GPU 0",
            sampler.uuid == smi[0]["uuid"],
            f"{sampler.uuid} vs {smi[0]['uuid']}",
        )


def step_matmul_tf32(ctx: Context, record: StepRecord) -> None:
    """8192^3 fp32 vs tf32 matmul: TF32 must be > 3x faster, else fp32 silently runs TF32."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda:0")
    b = torch.randn(n, n, device="cuda:0")

    def tflops(precision: str) -> float:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            for _ in range(2):
                a @ b
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            reps = 5
            start.record()
            for _ in range(reps):
                a @ b
            end.record()
            torch.cuda.synchronize()
            return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12
        finally:
            torch.set_float32_matmul_precision(previous)

    fp32, tf32 = tflops("highest"), tflops("high")
    record.figures.update(
        fp32_tflops=fp32,
        tf32_tflops=tf32,
        ratio=tf32 / fp32,
        override=os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"),
    )
    record.check(
        "tf32 > 3x fp32",
        tf32 > 3 * fp32,
        f"{tf32:.1f} vs {fp32:.1f} TFLOP/s (x{tf32 / fp32:.2f}); below 3x means 'fp32' runs TF32 "
        f"(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={os.environ.get('TORCH_ALLOW_TF32_CUBLAS_OVERRIDE')})",
    )


def _memory_configs(ctx: Context) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    gpt = gpt_params(ctx)
    if ctx.gpu:
        recsys = {"tables": 8, "rows": 250_000, "dim": 64, "dense_features": 13}
        lm = [
            {"micro_batch_size": 4, "max_sequence_length": 1024, "precision": "fp32"},
            {"micro_batch_size": 8, "max_sequence_length": 1024, "precision": "bf16"},
            {"micro_batch_size": 8, "max_sequence_length": 1024, "precision": "fp16"},
            {"micro_batch_size": 8, "max_sequence_length": 512, "precision": "tf32"},
            {
                "micro_batch_size": 16,
                "max_sequence_length": 512,
                "precision": "bf16",
                "activation_checkpointing": True,
            },
            {
                "micro_batch_size": 16,
                "max_sequence_length": 1024,
                "precision": "bf16",
                "activation_checkpointing": True,
            },
            {
                "micro_batch_size": 4,
                "max_sequence_length": 1024,
                "precision": "bf16",
                "gradient_accumulation_steps": 2,
            },
            {"micro_batch_size": 32, "max_sequence_length": 512, "precision": "bf16"},
        ]
        rec = [
            {"micro_batch_size": 2048, "precision": "fp32"},
            {"micro_batch_size": 8192, "precision": "bf16"},
        ]
    else:
        recsys = {"tables": 4, "rows": 10_000, "dim": 16, "dense_features": 13}
        lm = [
            {"micro_batch_size": 8, "max_sequence_length": 64, "precision": "fp32"},
            {
                "micro_batch_size": 16,
                "max_sequence_length": 64,
                "precision": "bf16",
                "activation_checkpointing": True,
            },
        ]
        rec = [{"micro_batch_size": 256, "precision": "fp32"}]
    configs = [("gpt", gpt, {**c, "learning_rate": 1e-3}) for c in lm]
    configs += [("recsys", recsys, {**c, "learning_rate": 1e-3}) for c in rec]
    return configs


def step_memory_model(ctx: Context, record: StepRecord) -> None:
    """Predicted peak (memory model) vs the allocator's measured peak, per config; CUDA context size."""
    from tuner.generator.memory_model import CUDA_CONTEXT_BYTES, estimate_peak
    from tuner.hardware.profile import HardwareProfile
    from tuner.types import TrialConfig
    from tuner.workloads import get_workload

    profile_data = probe_profile(ctx)
    hardware = HardwareProfile.from_dict(profile_data) if profile_data else None
    rows = []
    for workload, params, config in _memory_configs(ctx):
        work = get_workload(workload)
        resolved = work.resolve_params(params)
        cfg = TrialConfig.from_dict(config)
        shape = dict(work.shape(resolved))
        if workload == "gpt":
            from tuner.workloads.gpt import gpt_parameter_count

            seq = cfg.max_sequence_length
            shape["seq"] = seq
            shape["params"] = gpt_parameter_count(
                layers=resolved["layers"],
                d_model=resolved["d_model"],
                vocab_size=resolved["vocab_size"],
                seq=seq,
            )
        predicted = estimate_peak(shape, cfg, workload=workload, hardware=hardware).peak_bytes
        result = tuner_trial(workload, params, config, device=ctx.trial_device, steps=3, warmup=1)
        measured = result.peak_memory_bytes
        error = (predicted - measured) / measured if measured and result.ok else None
        rows.append(
            {
                "workload": workload,
                "config": config,
                "status": result.status.value,
                "predicted_bytes": int(predicted),
                "measured_bytes": measured,
                "memory_kind": result.memory_kind,
                "error": error,
                "reason": result.reason,
            }
        )
    record.figures["configs"] = rows
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    record.figures["median_abs_error"] = statistics.median(errors) if errors else None
    record.figures["max_abs_error"] = max(errors) if errors else None
    record.check(
        "every config ran ok",
        all(r["status"] == "ok" for r in rows),
        "; ".join(f"{r['workload']} {r['config']}: {r['reason']}" for r in rows if r["status"] != "ok"),
    )
    if ctx.gpu:
        record.check(
            "all measured by the CUDA allocator", all(r["memory_kind"] == "cuda_allocator" for r in rows)
        )
        record.check(
            "median |error| <= 5%",
            bool(errors) and statistics.median(errors) <= 0.05,
            f"{record.figures['median_abs_error']}",
        )
        record.check(
            "max |error| <= 15%", bool(errors) and max(errors) <= 0.15, f"{record.figures['max_abs_error']}"
        )
        import torch

        from tuner.hardware.probe import nvml_session

        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved(0)
        process_used = None
        with nvml_session() as nvml:
            uuid = str(torch.cuda.get_device_properties(0).uuid)
            uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            except nvml.NVMLError:
                record.notes.append(f"NVML has no GPU {uuid}; the context size is read from NVML's GPU 0")
                handle = nvml.nvmlDeviceGetHandleByIndex(0)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                # In a container NVML may show host PIDs or no per-process figure
                # (None): then the whole device's use stands in (nothing else runs).
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    process_used = int(proc.usedGpuMemory)
            device_used = nvml.nvmlDeviceGetMemoryInfo(handle).used
        used = process_used if process_used is not None else device_used
        record.figures.update(
            nvml_used_bytes=used,
            nvml_used_source="process" if process_used is not None else "whole device",
            torch_reserved_bytes=reserved,
            cuda_context_bytes=used - reserved,
            model_context_bytes=CUDA_CONTEXT_BYTES,
        )
        record.check(
            "CUDA context below the model's 1 GiB allowance",
            0 < used - reserved <= CUDA_CONTEXT_BYTES,
            f"{(used - reserved) / GIB:.2f} GiB ({record.figures['nvml_used_source']} NVML used - reserved)",
        )
    else:
        record.notes.append(
            "CPU: measured is the process's peak RSS (Python, torch and the data included), "
            "the model predicts allocator bytes: errors are shown, not checked"
        )


def step_study(ctx: Context, record: StepRecord) -> None:
    """A real study through `tuner tune` with the local executor and the back-to-back confirmation."""
    if ctx.gpu:
        # Small on purpose: 8 minutes hold every step, and a compiled GPT-2-small trial
        # alone may compile for a minute; --trial-timeout bounds any one trial.
        trials = "3" if ctx.quick else "5"
        preset, args = (
            "gpt-small-system",
            [
                "--trials",
                trials,
                # The largest configs of the preset (256 x 1024 tokens, 8 accumulation
                # steps) take ~10 s per step: 1 warm-up step, then --max-seconds stops
                # timing after one timed step; --confirm 2 keeps the pairs inside the cap.
                "--steps",
                "4",
                "--warmup-steps",
                "1",
                "--max-seconds",
                "1.5",
                "--timeout",
                "30",
                "--confirm",
                "2",
                "--trial-timeout",
                "90",
            ],
        )
        cap = 170  # below the orchestrator's 180 s, so a slow study is still recorded here
    else:
        preset, args = (
            "gpt-tiny-system",
            ["--trials", "3", "--steps", "4", "--warmup-steps", "1", "--timeout", "30", "--confirm", "2"],
        )
        cap = 85
    db = ctx.out_path / "study.db"
    db.unlink(missing_ok=True)
    command = tuner_cli(
        "tune",
        preset,
        *args,
        "--device",
        "cuda" if ctx.gpu else "cpu",
        "--workers",
        "1",
        "--storage",
        f"sqlite:///{db}",
        "--study",
        "gpu-check",
        "--seed",
        "0",
        "--json",
        "--output",
        str(ctx.out_path / "best_config.json"),
    )
    record.figures["command"] = " ".join(command[1:])
    run = run_command(command, timeout_s=cap)
    (ctx.out_path / "logs").mkdir(exist_ok=True)
    (ctx.out_path / "logs" / "study_stderr.txt").write_text(run["stderr"])
    record.figures["seconds"] = run["seconds"]
    if not record.check("tuner tune exits 0", run["rc"] == 0, run["stderr"][-600:]):
        return
    outcome = json.loads(run["stdout"])
    best = outcome.get("best_result") or {}
    record.figures["outcome"] = {
        "best_trial": outcome.get("best_trial"),
        "best_config": outcome.get("best_config"),
        "baseline_config": outcome.get("baseline_config"),
        "best_items_per_s": best.get("items_per_s"),
        "best_mfu": best.get("mfu"),
        "best_memory_kind": best.get("memory_kind"),
        "baseline_items_per_s": (outcome.get("baseline_result") or {}).get("items_per_s"),
        "ratio": outcome.get("ratio"),
        "search_ratio": outcome.get("search_ratio"),
        "ratio_range": outcome.get("ratio_range"),
        "confirmation": outcome.get("confirmation"),
        "item_unit": best.get("item_unit"),
        "best_has_nvml_telemetry": bool((best.get("telemetry") or {}).get("nvml")),
    }
    record.figures["trials"] = _trial_statuses(db)
    record.check("best trial ok", best.get("status") == "ok", str(best.get("reason")))
    pairs = ((outcome.get("confirmation") or {}).get("pairs")) or []
    record.check("back-to-back confirmation ran", len(pairs) >= 1, f"{len(pairs)} pairs")
    record.check("best config written", (ctx.out_path / "best_config.json").exists())
    mfu = best.get("mfu")
    record.check("best MFU <= 1", mfu is None or mfu <= 1.0, str(mfu))
    if ctx.gpu:
        record.check(
            "measured by the CUDA allocator",
            best.get("memory_kind") == "cuda_allocator",
            str(best.get("memory_kind")),
        )
        record.check("best trial has NVML telemetry", record.figures["outcome"]["best_has_nvml_telemetry"])


def _trial_statuses(db: Path) -> dict[str, int]:
    import sqlite3

    counts: dict[str, int] = {}
    try:
        with sqlite3.connect(db) as conn:
            for (value,) in conn.execute(
                "SELECT value_json FROM trial_user_attributes WHERE key = 'tuner.result'"
            ):
                status = json.loads(value).get("status", "?") if value else "?"
                counts[status] = counts.get(status, 0) + 1
            counts["optuna_trials"] = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error as exc:
        counts["error"] = str(exc)  # type: ignore[assignment]
    return counts


def _step_seconds(config: dict[str, Any], items_per_s: float | None, seq_default: int = 128) -> float:
    tokens = (
        int(config.get("micro_batch_size", 8))
        * int(config.get("gradient_accumulation_steps", 1))
        * int(config.get("max_sequence_length", seq_default))
    )
    return tokens / items_per_s if items_per_s else 1.0


def fidelity_plan(
    ctx: Context, best: dict[str, Any], default: dict[str, Any], outcome: dict[str, Any] | None
) -> tuple[int, int, int]:
    """(repetitions, warm-up steps, timed steps) that fit the step's cap.

    The study's best config may take ~10 s per step on a GPU (256 x 1024 tokens x 8
    accumulation steps), so the plan follows the step times the study measured: about
    60 s for 2 sides x 2 configs x repetitions, each run ~4 s of build plus its steps.
    """
    if not ctx.gpu:
        return 2, 1, 3
    outcome = outcome or {}
    step_s = _step_seconds(best, outcome.get("best_items_per_s")) + _step_seconds(
        default, outcome.get("baseline_items_per_s")
    )
    for reps, warmup, timed in ((3, 2, 6), (3, 2, 3), (2, 1, 3), (2, 1, 2), (1, 1, 2)):
        if 2 * reps * (2 * 4.0 + (warmup + timed) * step_s) <= 60.0:
            return reps, warmup, timed
    return 1, 1, 1


def step_fidelity(ctx: Context, record: StepRecord) -> None:
    """Tuner-reported vs independent items/s of the best and the default config, alternated."""
    from benchmarks.gpu_check.fidelity_core import compare

    best, default, outcome = study_configs(ctx, record)
    params = gpt_params(ctx)
    if best.get("compile"):
        # A cold compile of GPT-2 small costs about a minute, twice per repetition (two
        # different graphs): more than this step's cap. The timing itself is what is checked.
        best = {**best, "compile": False}
        record.notes.append(
            "the best config compiles; measured here with compile off (the precision matrix covers compile)"
        )
    reps, warmup, timed = fidelity_plan(ctx, best, default, outcome)
    record.figures["plan"] = {"reps": reps, "warmup_steps": warmup, "timed_steps": timed}
    rows = compare(
        {"best": best, "default": default},
        params,
        device=ctx.trial_device,
        reps=reps,
        warmup=warmup,
        timed=timed,
        peak_for=lambda p: peak_for(ctx, p),
    )
    record.figures["configs"] = rows
    best_row = rows["best"]
    record.figures["fidelity_ratio"] = best_row["ratio"]
    if outcome and outcome.get("best_items_per_s") and best_row["independent_median"]:
        record.figures["study_reported_over_independent"] = (
            outcome["best_items_per_s"] / best_row["independent_median"]
        )
    low, high = (0.95, 1.05) if ctx.gpu else (0.8, 1.25)
    for name, row in rows.items():
        record.check(f"{name}: all runs ok", row["all_ok"], "; ".join(row["errors"]))
        # On a GPU (nobody else on it) the throughput ratio itself; on a shared CPU the
        # ratio of the fastest steps, which other processes' load cannot stretch.
        label, ratio = (
            ("tuner/independent", row["ratio"]) if ctx.gpu else ("fastest-step", row["best_step_ratio"])
        )
        record.check(
            f"{name}: {label} ratio in [{low}, {high}]",
            ratio is not None and low <= ratio <= high,
            f"{ratio} (throughput ratio {row['ratio']}, per repetition {row['ratio_per_rep']})",
        )
        record.check(f"{name}: MFU <= 1", all(m is None or m <= 1.0 for m in row["mfu"]), str(row["mfu"]))
        record.check(f"{name}: independent losses finite", row["independent_losses_finite"])
    if not ctx.gpu:
        record.notes.append(
            "CPU --quick: tiny shapes and 3 timed steps on a shared 2-core machine; "
            "the band is wide and checks the fastest steps on purpose (benchmarks/fidelity.py measures more)"
        )


def step_profile(ctx: Context, record: StepRecord) -> None:
    """`tuner profile` of the best config."""
    best, _, outcome = study_configs(ctx, record)
    output = ctx.out_path / "profile.json"
    # A best config of ~10 s per step (see fidelity_plan), or any on a shared 2-core CPU,
    # gets fewer profiled steps.
    slow = not ctx.gpu or _step_seconds(best, (outcome or {}).get("best_items_per_s")) > 2.0
    record.figures["profiled_steps"] = 2 if slow else 3
    command = tuner_cli(
        "profile",
        "--workload",
        "gpt",
        "--params",
        json.dumps(gpt_params(ctx)),
        "--config",
        json.dumps(best),
        "--steps",
        "2" if slow else "3",
        "--warmup-steps",
        "1",
        "--device",
        ctx.trial_device,
        "--json",
        "--output",
        str(output),
    )
    run = run_command(command, timeout_s=55 if ctx.gpu else 38)
    record.figures["seconds"] = run["seconds"]
    if not record.check("tuner profile exits 0", run["rc"] == 0, run["stderr"][-600:]):
        return
    data = json.loads(output.read_text())
    timeline = data.get("cuda") if ctx.gpu else data.get("cpu")
    hotspots = (timeline or {}).get("hotspots") or []
    shares: dict[str, float] = {}
    for spot in hotspots:
        shares[spot.get("category", "?")] = shares.get(spot.get("category", "?"), 0.0) + float(
            spot.get("share") or 0
        )
    record.figures.update(
        items_per_s_profiled=data.get("items_per_s_profiled"),
        top_ops=[f"{h.get('name')} {float(h.get('share') or 0):.0%}" for h in hotspots[:5]],
        category_share_of_top=shares,
    )
    record.check(f"profile has {'GPU' if ctx.gpu else 'CPU'} hotspots", bool(hotspots), str(list(data)))


def step_devices(ctx: Context, record: StepRecord) -> None:
    """One trial each with device cuda:0, cuda and auto, each in a fresh worker; telemetry names GPU 0.

    On the CPU (a run without --quick): cpu and auto, to prove the step itself."""
    import benchmarks.gpu_check.workloads as gw
    from tuner.executors.local import LocalExecutor

    smi = nvidia_smi_gpus() or []
    expected = smi[0]["uuid"] if smi else None
    params = gpt_params(ctx)
    rows = {}
    devices = ("cuda:0", "cuda", "auto") if ctx.gpu else ("cpu", "auto")
    for number, device in enumerate(devices):
        executor = LocalExecutor(workers=1, device=device)
        try:
            request = request_for(
                "gpu_check_gpt", params, quick_config(ctx), device=device, steps=4, warmup=2, number=number
            )
            result = executor.submit(request).result()
        finally:
            executor.close()
        state = gw.parse_state_note(result.notes) or {}
        telemetry_uuid = find_key(result.telemetry, "uuid")
        rows[device] = {
            **brief(result),
            "device_uuid": state.get("device_uuid"),
            "telemetry_uuid": telemetry_uuid,
            "telemetry_samples": find_key(result.telemetry, "samples"),
        }
        record.check(f"{device}: ok", result.ok, str(result.reason))
        if not ctx.gpu:
            continue
        record.check(
            f"{device}: trained on nvidia-smi GPU 0",
            state.get("device_uuid") == expected,
            f"{state.get('device_uuid')} vs {expected}",
        )
        record.check(
            f"{device}: telemetry UUID == nvidia-smi",
            telemetry_uuid is not None and telemetry_uuid == expected,
            f"{telemetry_uuid} vs {expected} (None: the trial's telemetry carries no UUID)",
        )
    record.figures["trials"] = rows
    record.figures["nvidia_smi_uuid"] = expected


def step_precision_matrix(ctx: Context, record: StepRecord) -> None:
    """fp32/tf32/bf16/fp16 x compile in ONE persistent worker, then fp32 again."""
    import benchmarks.gpu_check.workloads as gw
    from tuner.executors.local import LocalExecutor

    if ctx.gpu:
        # Two layers: the same code paths as GPT-2 small at a fraction of the compile time.
        params = {"layers": 2, "d_model": 256, "heads": 4, "vocab_size": 8192, "dropout": 0.0}
        base = {"micro_batch_size": 8, "max_sequence_length": 256, "learning_rate": 1e-3}
        compiles = (False, True)
    else:
        params = gpt_params(ctx)
        base = {"micro_batch_size": 4, "max_sequence_length": 64, "learning_rate": 1e-3}
        compiles = (False,)
        record.notes.append("CPU --quick: compile=True left out (20-60 s per compile on 2 cores)")
    plan = [(p, c) for c in compiles for p in PRECISIONS] + [("fp32", False)]
    executor = LocalExecutor(workers=1, device=ctx.device)
    rows = []
    try:
        pids_before = executor.worker_pids()
        for number, (precision, compile_) in enumerate(plan):
            config = {**base, "precision": precision, "compile": compile_}
            request = request_for(
                "gpu_check_gpt", params, config, device=ctx.trial_device, steps=4, warmup=2, number=number
            )
            result = executor.submit(request).result()
            rows.append(
                {
                    "precision": precision,
                    "compile": compile_,
                    **brief(result),
                    "state_at_start": gw.parse_state_note(result.notes),
                }
            )
        pids_after = executor.worker_pids()
        replaced = executor.replaced_workers
    finally:
        executor.close()
    record.figures.update(trials=rows, worker_pids=[pids_before, pids_after], replaced_workers=replaced)
    record.check(
        "one persistent worker", pids_before == pids_after and replaced == 0, f"{pids_before} -> {pids_after}"
    )
    for row in rows:
        label = f"{row['precision']}{' compiled' if row['compile'] else ''}"
        record.check(f"{label}: ok", row["status"] == "ok", str(row["reason"]))
        record.check(
            f"{label}: finite losses",
            bool(row["loss_curve"]) and finite(row["loss_curve"]),
            str(row["loss_curve"]),
        )
    states = [row["state_at_start"] for row in rows]
    keys = ("matmul_precision", "cudnn_allow_tf32", "cuda_matmul_allow_tf32")
    first = {k: (states[0] or {}).get(k) for k in keys}
    record.figures["tf32_state_first_trial"] = first
    changed = [
        f"before trial {i} ({rows[i]['precision']}): {s}"
        for i, s in enumerate(states)
        if {k: (s or {}).get(k) for k in keys} != first
    ]
    record.check(
        "TF32 switches restored after every trial", all(states) and not changed, "; ".join(changed)[:600]
    )


def _gpu_total_bytes() -> int | None:
    from tuner.hardware.probe import NvmlUnavailableError, nvml_session

    try:
        with nvml_session() as nvml:
            return int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0)).total)
    except (NvmlUnavailableError, Exception):
        return None


def _oom_batch(params: dict[str, Any], config: dict[str, Any], target_bytes: float) -> int:
    """The smallest power-of-two micro batch the memory model puts above `target_bytes`."""
    from tuner.generator.memory_model import estimate_peak
    from tuner.types import TrialConfig
    from tuner.workloads import get_workload
    from tuner.workloads.gpt import gpt_parameter_count

    work = get_workload("gpt")
    resolved = work.resolve_params(params)
    seq = int(config["max_sequence_length"])
    shape = {
        **work.shape(resolved),
        "seq": seq,
        "params": gpt_parameter_count(
            layers=resolved["layers"], d_model=resolved["d_model"], vocab_size=resolved["vocab_size"], seq=seq
        ),
    }
    batch = int(config["micro_batch_size"])
    while (
        estimate_peak(
            shape, TrialConfig.from_dict({**config, "micro_batch_size": batch}), workload="gpt"
        ).peak_bytes
        < target_bytes
    ):
        batch *= 2
    return batch


def step_oom_cycle(ctx: Context, record: StepRecord) -> None:
    """fit -> OOM -> fit in one worker: the middle is `oom`, the repeat's peak within 2%, memory back."""
    import benchmarks.gpu_check.workloads  # noqa: F401  (registers gpu_check_gpt in the workers)
    from tuner.executors.local import LocalExecutor

    params = gpt_params(ctx)
    total = _gpu_total_bytes() or 80 * GIB
    fit = quick_config(ctx)
    oom = {**fit, "micro_batch_size": _oom_batch(params, fit, 3 * total)}
    executor = LocalExecutor(workers=1, device="cuda")
    rows, used = [], []
    try:
        used.append(nvml_used_bytes())
        for number, config in enumerate((fit, oom, fit)):
            request = request_for(
                "gpu_check_gpt", params, config, device="cuda", steps=3, warmup=1, number=number
            )
            result = executor.submit(request).result()
            rows.append({"config": config, **brief(result)})
            used.append(nvml_used_bytes())
        replaced = executor.replaced_workers
    finally:
        executor.close()
    record.figures.update(trials=rows, nvml_used_bytes=used, replaced_workers=replaced, gpu_total_bytes=total)
    statuses = [r["status"] for r in rows]
    record.check("statuses ok, oom, ok", statuses == ["ok", "oom", "ok"], f"{statuses}; {rows[1]['reason']}")
    first, last = rows[0]["peak_memory_bytes"], rows[2]["peak_memory_bytes"]
    record.check(
        "repeat peak within 2%",
        bool(first and last) and abs(last - first) / first <= 0.02,
        f"{first} vs {last}",
    )
    after_fit, after_oom = used[1], used[2]
    if after_fit is not None and after_oom is not None:
        record.check(
            "memory back near baseline after the OOM (<= 1 GiB over the fit)",
            after_oom - after_fit <= GIB,
            f"{after_fit / GIB:.2f} -> {after_oom / GIB:.2f} GiB used",
        )
    record.check("same worker throughout", replaced == 0, f"replaced {replaced}")


def step_device_assert(ctx: Context, record: StepRecord) -> None:
    """A device-side assert, then a normal trial in the same slot: the second is `ok`."""
    import benchmarks.gpu_check.workloads  # noqa: F401
    from tuner.executors.local import LocalExecutor

    params = gpt_params(ctx)
    device = ctx.trial_device
    executor = LocalExecutor(workers=1, device=ctx.device)
    try:
        pids = [executor.worker_pids()]
        first = executor.submit(
            request_for(
                "gpu_check_assert", params, quick_config(ctx), device=device, steps=2, warmup=1, number=0
            )
        ).result()
        pids.append(executor.worker_pids())
        second = executor.submit(
            request_for(
                "gpu_check_gpt", params, quick_config(ctx), device=device, steps=3, warmup=1, number=1
            )
        ).result()
        pids.append(executor.worker_pids())
        replaced = executor.replaced_workers
    finally:
        executor.close()
    record.figures.update(
        assert_trial=brief(first), next_trial=brief(second), worker_pids=pids, replaced_workers=replaced
    )
    record.check(
        "assert trial failed (not ok)",
        first.status.value == "failed",
        f"{first.status.value}: {first.reason}",
    )
    if ctx.gpu:
        record.check(
            "assert named in the reason", "assert" in (first.reason or "").lower(), str(first.reason)
        )
    else:
        record.notes.append("CPU: an out-of-range index is a plain IndexError, not a sticky device error")
    record.check("next trial in the same slot ok", second.ok, str(second.reason))


def step_nccl(ctx: Context, record: StepRecord) -> None:
    """The NCCL path with world_size 2 (needs 2+ GPUs)."""
    import benchmarks.gpu_check.workloads  # noqa: F401
    from tuner.executors.local import LocalExecutor

    params = gpt_params(ctx)
    executor = LocalExecutor(workers=1, device="cuda")
    try:
        config = quick_config(ctx, world_size=2)
        result = executor.submit(
            request_for("gpt", params, config, device="cuda", steps=4, warmup=2, number=0)
        ).result()
    finally:
        executor.close()
    record.figures["trial"] = brief(result)
    record.check("world_size 2 trial ok", result.ok, str(result.reason))


STEPS: dict[str, Callable[[Context, StepRecord], None]] = {
    "env": step_env,
    "probe": step_probe,
    "telemetry": step_telemetry,
    "matmul_tf32": step_matmul_tf32,
    "devices": step_devices,
    "study": step_study,
    "fidelity": step_fidelity,
    "memory_model": step_memory_model,
    "precision_matrix": step_precision_matrix,
    "oom_cycle": step_oom_cycle,
    "device_assert": step_device_assert,
    "cuda_context": step_cuda_context,
    "profile": step_profile,
    "inference": step_inference,
    "nccl": step_nccl,
}


def main(argv: list[str]) -> int:
    name, ctx = argv[0], Context.from_json(argv[1])
    record = StepRecord(name)
    try:
        STEPS[name](ctx, record)
    except Exception as exc:
        record.errors.append(f"{type(exc).__name__}: {exc}"[:1000])
        record.notes.append(traceback.format_exc()[-2000:])
    path = ctx.out_path / "steps" / f"{name}.json"
    path.write_text(json.dumps(record.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
