"""The GPU check's `inference` step: a small real inference study of the recsys serving
workload (CTR scoring) under a p99 SLO, through `tuner.study.inference_study`.

A grid over serving precision (fp32/bf16/fp16, and int8_dynamic by torchao, which falls
back to torch.ao's quantize_dynamic without torchao, as tuner/inference does) x batch size,
compile off, measured against the default config (fp32, batch 1) in the same run. A config
the library refuses on this device (fp16 on CPU, ...) is recorded with its reason, not a
failure.

Recorded per config: QPS at the SLO, p99, the accuracy guard's verdict and figures, the
measured peak memory (the CUDA allocator's peak on a GPU) and the inference memory model's
prediction; overall: the best config, its QPS ratio to the default, which int8 library
ran, and where the served model's weights lived and in which dtype. On a GPU also: that
the weights were on the GPU, that a bf16 or fp16 config was served and met the SLO
accurately, that a forward's host-clock latency covers its GPU work (CUDA events on the
instance's stream: a clock that did not wait would read far less), and one CUDA graphs
config (`compile_mode: reduce-overhead`) served, when the step's cap leaves time for its
compile.
"""

from __future__ import annotations

from typing import Any

from benchmarks.gpu_check.common import Context, StepRecord

#: Small on a GPU too: ~10 configs with the default ramp must fit the step's cap.
GPU_PARAMS = {"tables": 8, "rows": 100_000, "dim": 64}
#: The quick CPU run adds at most a few seconds: a tiny model, one config plus one refused.
CPU_PARAMS = {"tables": 2, "rows": 1000, "dim": 8}
GPU_SLO_MS, CPU_SLO_MS = 50.0, 150.0  # the CPU is a shared 2-core VM: a generous SLO
#: The CUDA graphs config runs only if the grid took less than this of the 90 s cap.
GRAPHS_BUDGET_S = 40.0


def _grid(ctx: Context) -> dict[str, Any]:
    if ctx.gpu:
        precisions, batches = ["fp32", "bf16", "fp16", "int8_dynamic"], [16, 256]
    elif ctx.quick:
        # bf16 runs; fp16 is refused on CPU before any trial (costs nothing, shows the path)
        precisions, batches = ["bf16", "fp16"], [16]
    else:
        precisions, batches = ["fp32", "bf16", "fp16", "int8_dynamic"], [16, 128]
    return {
        "serving_precision": {"type": "categorical", "choices": precisions},
        "max_batch_size": {"type": "categorical", "choices": batches},
        "int8_backend": "torchao",
        "compile_mode": "off",
    }


def _int8_library(notes: list[str]) -> str | None:
    for note in notes:
        if "torchao" in note and "not installed" not in note:
            return "torchao"
        if "quantize_dynamic" in note:
            return "torch.ao.quantization.quantize_dynamic"
    return None


def _row(config: Any, result: Any, slo: float) -> dict[str, Any]:
    predicted, measured = result.predicted_peak_bytes, result.peak_memory_bytes
    return {
        "config": {
            "serving_precision": config.serving_precision,
            "max_batch_size": config.max_batch_size,
            "int8_backend": config.int8_backend if config.int8 else None,
            "compile_mode": config.compile_mode,
        },
        "status": result.status.value,
        "reason": result.reason,
        "qps_at_slo": result.qps,
        "p99_ms": result.p99_ms,
        "within_slo": result.p99_ms is not None and result.p99_ms <= slo,
        # accurate = the guard passed (an inaccurate config is never load-tested)
        "accuracy_guard": None
        if result.status.value in ("refused", "infeasible", "failed")
        else result.status.value != "inaccurate",
        "accuracy": dict(result.accuracy),
        "peak_memory_bytes": measured,
        "memory_kind": result.memory_kind,
        "predicted_peak_bytes": predicted,
        "memory_error": None if not predicted or not measured else predicted / measured - 1,
        "int8_library": _int8_library(list(result.notes)) if config.int8 else None,
        "notes": list(result.notes)[:4],
    }


def _served_on(workload: str, params: dict[str, Any], config: Any, device: str) -> dict[str, str]:
    """Where and in which dtype the prepared model's first floating weight lives."""
    from tuner.inference.prepare import prepare_model
    from tuner.inference.trial import serving_setup

    module = prepare_model(serving_setup(workload, params).model, config, device).module
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device.type, "dtype": str(tensor.dtype).replace("torch.", "")}
    return {"device": "?", "dtype": "?"}


def _latency_sync(workload: str, params: dict[str, Any], config: Any, device: str) -> dict[str, float]:
    """Median host-clock time of a full-batch forward (as the batcher times it) and the
    GPU time CUDA events on the instance's stream saw for the same forward."""
    import statistics
    import time

    import torch

    from tuner.inference.prepare import prepare_model
    from tuner.inference.trial import serving_setup

    setup = serving_setup(workload, params)
    prepared = prepare_model(setup.model, config, device)
    batch = setup.make_requests(config.max_batch_size, 5)
    host, gpu = [], []
    for rep in range(8):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        with prepared.running():
            begin.record()  # on the current stream: the instance's own
            setup.forward(prepared.module, batch, "longest")
            end.record()
        elapsed = time.perf_counter() - start
        if rep >= 3:  # the first are warm-up (allocator, cuBLAS handles)
            host.append(elapsed * 1000)
            gpu.append(begin.elapsed_time(end))
    return {"host_ms": statistics.median(host), "gpu_event_ms": statistics.median(gpu)}


def step_inference(ctx: Context, record: StepRecord) -> None:
    """A grid inference study of recsys serving under a p99 SLO; per-config figures and checks."""
    import warnings

    from tuner.inference.request import RampBudget
    from tuner.space.search_space import SearchSpace
    from tuner.study.inference_study import run_inference_study
    from tuner.study.spec import StudySpec

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao's own notice
    slo = GPU_SLO_MS if ctx.gpu else CPU_SLO_MS
    params = GPU_PARAMS if ctx.gpu else CPU_PARAMS
    grid = _grid(ctx)
    trials = len(grid["serving_precision"]["choices"]) * len(grid["max_batch_size"]["choices"])
    # The shortest ramp on the quick CPU run; the default ramp (~0.6 s steps) on a GPU.
    ramp = (
        RampBudget(step_s=0.1, max_steps=2, min_requests=20, max_requests=800)
        if ctx.quick and not ctx.gpu
        else RampBudget(step_s=0.4, max_steps=5, min_requests=150)
    )
    spec = StudySpec(
        name="gpu-check-inference",
        workload="recsys",
        workload_params=params,
        space=SearchSpace.from_dict(
            {"name": "gpu-check-recsys-serving", "kind": "inference", "params": grid}
        ),
        objectives=("qps_at_slo",),
        sampler="grid",
        n_trials=trials,
        slo_p99_ms=slo,
        device=ctx.trial_device,
    )
    db = ctx.out_path / "inference.db"
    db.unlink(missing_ok=True)
    # confirm_rounds=0: each grid point measured once, so the step keeps its time cap (the
    # confirmation of a new best is CPU-tested: tests/test_inference_starting.py)
    outcome = run_inference_study(spec, storage=f"sqlite:///{db}", progress=False, ramp=ramp, confirm_rounds=0)
    rows = [{"trial": "default", **_row(outcome.baseline_config, outcome.baseline_result, slo)}]
    rows += [{"trial": n, **_row(c, r, slo)} for n, c, r in outcome.trials]
    int8 = sorted({r["int8_library"] for r in rows if r["int8_library"]})
    best = next((r for r in rows if r["trial"] == outcome.best_trial), None)
    from tuner.workloads import get_workload

    full_params = get_workload("recsys").resolve_params(params)
    built = {
        c.serving_precision: _served_on("recsys", full_params, c, ctx.trial_device)
        for _, c, r in outcome.trials
        if r.status.value not in ("refused", "infeasible")
    }
    sync = graphs = None
    if ctx.gpu:
        from tuner.inference.config import InferenceConfig
        from tuner.inference.request import InferenceRequest
        from tuner.inference.trial import run_inference_trial

        sync = _latency_sync("recsys", full_params, InferenceConfig(max_batch_size=256), ctx.trial_device)
        # CUDA graphs compile (inductor + one graph recorded per shape): only when the
        # step's cap (90 s) leaves room for it.
        if outcome.duration_s < GRAPHS_BUDGET_S:
            config = InferenceConfig(max_batch_size=256, compile_mode="reduce-overhead")
            result = run_inference_trial(
                InferenceRequest(
                    workload="recsys",
                    params=full_params,
                    config=config,
                    slo_p99_ms=slo,
                    device=ctx.trial_device,
                    ramp=ramp,
                )
            )
            graphs = {"trial": "cuda_graphs", **_row(config, result, slo)}
    memory = [
        {
            "trial": r["trial"],
            "predicted_bytes": r["predicted_peak_bytes"],
            "measured_bytes": r["peak_memory_bytes"],
            "error": r["memory_error"],
        }
        for r in rows
        if r["peak_memory_bytes"]
    ]
    record.figures.update(
        workload="recsys",
        params=params,
        device=ctx.trial_device,
        slo_p99_ms=slo,
        ramp={"step_s": ramp.step_s, "max_steps": ramp.max_steps, "min_requests": ramp.min_requests},
        configs=rows,
        counts=outcome.counts(),
        best_trial=outcome.best_trial,
        best_config=best["config"] if best else None,
        best_qps=best["qps_at_slo"] if best else None,
        default_qps=outcome.baseline_result.qps,
        ratio=outcome.ratio,
        int8_library=int8[0] if len(int8) == 1 else (int8 or None),
        served_on=built,
        memory_model=memory,
        memory_model_kind=outcome.baseline_result.memory_kind,
        cuda_graphs=graphs
        if graphs is not None
        else (
            "compile_mode reduce-overhead: CUDA only"
            if not ctx.gpu
            else f"not run: the grid took {outcome.duration_s:.0f} s of the step's cap"
        ),
        latency_sync=sync,
        duration_s=outcome.duration_s,
    )
    record.check(
        "the default config sustained a rate under the SLO",
        outcome.baseline_result.ok,
        f"{outcome.baseline_result.status.value}: {outcome.baseline_result.reason}",
    )
    record.check(
        "every config has a status; refused and failed ones a reason",
        all(r["status"] == "ok" or r["reason"] for r in rows),
        str([(r["trial"], r["status"], r["reason"]) for r in rows if r["status"] != "ok"])[:400],
    )
    record.check(
        "no config failed (a refusal is not a failure)",
        outcome.counts()["failed"] == 0,
        str([r["reason"] for r in rows if r["status"] == "failed"])[:400],
    )
    record.check(
        "a best config: ok, accurate, p99 within the SLO, the highest QPS of those",
        best is not None
        and best["status"] == "ok"
        and best["accuracy_guard"] is True
        and best["within_slo"]
        and all(best["qps_at_slo"] >= r["qps_at_slo"] for r in rows[1:] if r["status"] == "ok"),
        str(best)[:400],
    )
    record.check(
        "ratio = best QPS / default QPS",
        outcome.ratio is not None
        and best is not None
        and abs(outcome.ratio - best["qps_at_slo"] / outcome.baseline_result.qps) < 1e-9,
        str(outcome.ratio),
    )
    record.check(
        "measured peak memory and the memory model's prediction for every served config",
        all(m["predicted_bytes"] and m["measured_bytes"] for m in memory) and len(memory) >= 2,
        str(memory)[:400],
    )
    wanted = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    record.check(
        "each float precision was served in its dtype",
        all(on["dtype"] == wanted[p] for p, on in built.items() if p in wanted),
        str(built),
    )
    if any(r["config"]["serving_precision"].startswith("int8") and r["status"] != "refused" for r in rows):
        record.check("the int8 library that ran is named", bool(int8), str(int8))
    if ctx.gpu:
        record.check(
            "the served model's weights were on the GPU",
            bool(built) and all(on["device"] == "cuda" for on in built.values()),
            str(built),
        )
        half = [r for r in rows if r["config"]["serving_precision"] in ("bf16", "fp16")]
        record.check(
            "a bf16 or fp16 config was served on the GPU: accurate, within the SLO",
            any(r["status"] == "ok" and r["accuracy_guard"] and r["within_slo"] for r in half),
            str([(r["config"], r["status"], r["reason"]) for r in half])[:400],
        )
        record.check(
            "measured peak memory is the CUDA allocator's",
            all(r["memory_kind"] == "cuda_allocator" for r in rows if r["peak_memory_bytes"]),
            str({r["trial"]: r["memory_kind"] for r in rows}),
        )
        assert sync is not None
        record.check(
            "a forward's host-clock latency covers its GPU work (synchronised, not the launch time)",
            sync["host_ms"] >= 0.9 * sync["gpu_event_ms"] > 0,
            str(sync),
        )
        if graphs is not None:
            record.check(
                "a CUDA graphs config (compile_mode reduce-overhead) served accurately",
                graphs["status"] in ("ok", "over_slo") and graphs["accuracy_guard"] is True,
                str(graphs)[:400],
            )
    record.notes.append(
        f"memory: {outcome.baseline_result.memory_kind} meter vs tuner.inference.memory's model; "
        "errors shown, not checked"
    )
    if "torch.ao.quantization.quantize_dynamic" in int8:
        record.notes.append("torchao absent (or refused): int8 ran through torch.ao quantize_dynamic")
