"""Where a serving trial runs: the CPU path unchanged, GPU-only knobs refused on the CPU
before any trial (field errors naming knob, value and fix), the memory model per device;
and, on a machine with CUDA, the served weights on the GPU in their dtype, latency that
waits for the GPU, and peak memory from the CUDA allocator."""

from __future__ import annotations

import time
import warnings

import optuna
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from torch import nn

from api.main import create_app
from api.settings import Settings
from tests._api_support import new_token, sqlite_db
from tests.inference_test_workloads import TinyServed
from tuner.cli.main import main as cli_main
from tuner.inference.batcher import BatchingPolicy, InstanceThreads, serve_open_loop
from tuner.inference.config import InferenceConfig
from tuner.inference.memory import PROCESS_BASE_BYTES, device_memory_limit, predicted_peak_bytes
from tuner.inference.placement import OnDevice
from tuner.inference.prepare import prepare_model
from tuner.inference.refusals import refusal, space_device_problems
from tuner.inference.request import InferenceRequest, RampBudget
from tuner.inference.result import InferenceStatus
from tuner.inference.serving import ServingShape
from tuner.inference.trial import graph_batch_sizes, padded_to_graph_size, run_inference_trial
from tuner.space.search_space import SearchSpace
from tuner.workloads import register_workload

warnings.filterwarnings("ignore", category=DeprecationWarning)
register_workload(TinyServed)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
QUICK_RAMP = RampBudget(step_s=0.1, max_steps=2, min_requests=20, max_requests=800)
GRAPHS = {"compile_mode": "reduce-overhead", "max_batch_size": {"type": "categorical", "choices": [1, 8]}}


def _space(params: dict) -> SearchSpace:
    return SearchSpace.from_dict({"name": "dev", "kind": "inference", "params": params})


def test_gpu_only_knobs_are_field_errors_on_the_cpu_only_when_nothing_else_could_run():
    (problem,) = space_device_problems(_space(GRAPHS), "cpu")
    assert problem.field == "space.params.compile_mode" and problem.value == "reduce-overhead"
    assert "CUDA graphs" in problem.problem and "default or max-autotune" in problem.fix
    fp16 = space_device_problems(
        _space({"serving_precision": {"type": "categorical", "choices": ["fp16"]}}), "cpu"
    )
    assert [p.field for p in fp16] == ["space.params.serving_precision"] and "bf16" in fp16[0].fix
    # a mix: the study runs and refuses those trials one by one, with the reason
    mixed = _space({"compile_mode": {"type": "categorical", "choices": ["off", "reduce-overhead"]}})
    assert space_device_problems(mixed, "cpu") == []
    assert space_device_problems(_space(GRAPHS), "cuda") == []
    conditional = _space(
        {
            "fusion": {"type": "bool"},
            "compile_mode": {"type": "categorical", "choices": ["reduce-overhead"], "when": {"fusion": True}},
        }
    )
    assert space_device_problems(conditional, "cpu") == []  # unfused configs run uncompiled
    why = refusal(
        InferenceConfig(compile_mode="reduce-overhead"),
        device="cpu",
        paddings=("longest",),
        variable_length=False,
    )
    assert why and "CUDA graphs" in why and "max-autotune" in why


def test_cuda_graphs_on_the_cpu_stop_the_cli_and_rest_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "graphs.yaml"
    path.write_text(
        yaml.safe_dump({"name": "graphs", "kind": "inference", "workload": "tiny-served", "params": GRAPHS})
    )
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli_main(["tune", str(path), "--trials", "1", "--device", "cpu", "--storage", db]) == 2
    err = capsys.readouterr().err
    assert "compile_mode" in err and "reduce-overhead" in err and "max-autotune" in err
    assert optuna.study.get_all_study_names(db) == []  # no study half-written

    url = sqlite_db(tmp_path)
    with TestClient(create_app(Settings(storage=url, run_studies=False))) as client:
        body = {
            "name": "graphs",
            "workload": "tiny-served",
            "space": {"name": "g", "kind": "inference", "params": GRAPHS},
        }
        r = client.post(
            "/api/v1/studies",
            json={**body, "device": "cpu"},
            headers={"Authorization": f"Bearer {new_token(url)}"},
        )
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "space.params.compile_mode" and problem["value"] == "reduce-overhead"
    assert "max-autotune" in problem["fix"]


def test_cpu_serving_is_unchanged_and_the_device_wrapper_moves_and_casts_inputs():
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    prepared = prepare_model(model, InferenceConfig(serving_precision="bf16"))
    assert prepared.device.type == "cpu" and prepared.stream is None
    assert not isinstance(prepared.module, OnDevice)  # the CPU path serves the module itself
    assert all(p.dtype == torch.bfloat16 for p in prepared.module.parameters())
    # The wrapper a GPU instance gets, run on the CPU: float inputs cast, ints kept, output on the host.
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, ids):
            seen.update(x=x.dtype, ids=ids.dtype)
            return x.sum(1)

    out = OnDevice(Probe(), torch.device("cpu"), torch.bfloat16)(torch.randn(3, 8), ids=torch.arange(3))
    assert seen == {"x": torch.bfloat16, "ids": torch.int64} and out.device.type == "cpu"


def test_the_exported_snippet_builds_an_fp16_model_on_the_device_it_is_given():
    from tuner.inference.export import serving_snippet

    namespace: dict = {"__name__": "snippet"}
    exec(compile(serving_snippet(InferenceConfig(serving_precision="fp16")), "snippet.py", "exec"), namespace)
    served = namespace["build_served_model"](nn.Linear(8, 2), "cpu")  # "cuda" where it was tuned on one
    assert {p.dtype for p in served.parameters()} == {torch.float16}


def test_gpu_instances_keep_their_threads_across_load_steps():
    """CUDA graph trees are per thread: a GPU server runs each instance on one long-lived
    thread from warm-up to the last step (here with plain callbacks, on the CPU)."""
    import threading

    seen: dict[int, set[int]] = {0: set(), 1: set()}

    def forward(index):
        return lambda batch: seen[index].add(threading.get_ident())

    threads = InstanceThreads(2)
    try:
        warm = threads.submit(0, threading.get_ident).result()
        for _ in range(3):  # three load steps
            record = serve_open_loop(
                [0.001 * i for i in range(40)], BatchingPolicy(4, 0.0), [forward(0), forward(1)], threads=threads
            )
            assert record.error is None and sum(record.batch_sizes) == 40
    finally:
        threads.close()
    assert seen[0] == {warm}  # the thread that warmed instance 0 served it in every step
    assert len(seen[1]) <= 1 and not seen[1] & seen[0]


def test_cuda_graph_batches_are_padded_to_a_few_recorded_sizes():
    assert graph_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert graph_batch_sizes(1) == [1]
    assert padded_to_graph_size([5, 6, 7], 100) == [5, 6, 7, 7]
    assert len(padded_to_graph_size(list(range(70)), 100)) == 100
    assert padded_to_graph_size([3], 64) == [3]
    sizes = {len(padded_to_graph_size(list(range(n)), 100)) for n in range(1, 101)}
    assert sizes == set(graph_batch_sizes(100))


def test_the_memory_model_matches_each_devices_meter():
    shape = ServingShape(linear_params=1_000_000, other_params=0, activation_bytes_per_item=1000.0)
    config = InferenceConfig(max_batch_size=10, instances=2)
    cpu, cuda = predicted_peak_bytes(shape, config), predicted_peak_bytes(shape, config, "cuda")
    # The CPU meter reads the process's RSS (its fixed part included); the GPU's the
    # allocator's tensors (no process part, a cuBLAS workspace per instance stream).
    assert cpu - PROCESS_BASE_BYTES == 2 * (4_000_000 + 10_000)
    assert cuda > 2 * (4_000_000 + 10_000) and cuda < cpu
    h100 = 80 * 2**30
    assert device_memory_limit(None, "cpu", None) is None
    assert device_memory_limit(5, "cuda", h100) == 5  # the study's limit wins
    assert 70 * 2**30 < device_memory_limit(None, "cuda", h100) < h100


# -- on a GPU ------------------------------------------------------------------------------


def _request(config: InferenceConfig, device: str = "cuda") -> InferenceRequest:
    return InferenceRequest(
        workload="tiny-served",
        params={"outlier": 0.0},
        config=config,
        slo_p99_ms=200,
        device=device,
        ramp=QUICK_RAMP,
    )


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_serving_puts_the_weights_on_the_gpu_in_their_dtype_and_meters_its_memory(precision):
    prepared = prepare_model(nn.Linear(32, 10).eval(), InferenceConfig(serving_precision=precision), "cuda")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(p.device.type == "cuda" and p.dtype == dtype for p in prepared.module.parameters())
    result = run_inference_trial(_request(InferenceConfig(serving_precision=precision, max_batch_size=16)))
    assert result.status is InferenceStatus.OK, result.reason
    assert result.memory_kind == "cuda_allocator" and result.peak_memory_bytes > 0
    assert any("served on cuda" in n for n in result.notes)


@needs_cuda
def test_a_gpu_forward_returns_only_when_its_kernels_are_done():
    class Sleeper(nn.Module):
        def forward(self, x):
            torch.cuda._sleep(int(2e8))  # ~0.1 s of GPU cycles, queued asynchronously
            return x + 1

    prepared = prepare_model(Sleeper(), InferenceConfig(), "cuda")
    with prepared.running():
        prepared.module(torch.zeros(1))  # warm
    start = time.perf_counter()
    with prepared.running():
        prepared.module(torch.zeros(1))
    queued_only = time.perf_counter() - start
    start = time.perf_counter()
    torch.cuda._sleep(int(2e8))
    launch = time.perf_counter() - start
    torch.cuda.synchronize()
    assert queued_only > 10 * launch  # the forward waited for the GPU, not just the launch


@needs_cuda
def test_cuda_graphs_serve_on_a_gpu():
    result = run_inference_trial(_request(InferenceConfig(compile_mode="reduce-overhead", max_batch_size=8)))
    assert result.status is InferenceStatus.OK, result.reason
    assert any("CUDA graphs" in n for n in result.notes)
