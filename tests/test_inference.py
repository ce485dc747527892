"""The inference engine on this CPU: int8, fusion, the open-loop batcher, the accuracy
guard, the memory model. Real models, real torch kernels, real threads."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from tuner.errors import ConfigError
from tuner.inference.accuracy import auc, compare
from tuner.inference.batcher import BatchingPolicy, serve_open_loop
from tuner.inference.config import InferenceConfig
from tuner.inference.memory import predicted_peak_bytes, weight_bytes
from tuner.inference.prepare import fuse_conv_bn_relu, linear_weight_bytes, prepare_model
from tuner.inference.refusals import refusal
from tuner.workloads import get_workload


def _served(workload: str, params: dict):
    wl = get_workload(workload)
    return wl.serving(wl.resolve_params(params))


@pytest.mark.parametrize(
    ("workload", "params", "backend"),
    [
        ("recsys", {"tables": 8, "rows": 1000, "dim": 64}, "torchao"),
        ("recsys", {"tables": 8, "rows": 1000, "dim": 64}, "fbgemm"),
        ("gpt", {"layers": 2, "d_model": 64, "heads": 4}, "torchao"),
    ],
)
def test_int8_dynamic_keeps_outputs_within_tolerance_and_shrinks_linear_weights(workload, params, backend):
    setup = _served(workload, params)
    prepared = prepare_model(
        setup.model, InferenceConfig(serving_precision="int8_dynamic", int8_backend=backend)
    )
    payloads, labels = setup.heldout()
    with torch.inference_mode():
        reference = setup.forward(setup.model, payloads, "longest")
    with prepared.running():
        quantized = setup.forward(prepared.module, payloads, "longest")
    check = compare(setup.accuracy_kind, reference, quantized, labels)
    assert check.accurate, check.reason
    assert check.metrics["max_abs_diff"] > 0  # it really runs int8, not the fp32 copy
    fp32_bytes = linear_weight_bytes(setup.model)
    assert linear_weight_bytes(prepared.module) <= 0.30 * fp32_bytes
    assert any(
        backend in note or ("quantize_dynamic" in note and backend == "fbgemm") for note in prepared.notes
    )


def test_conv_bn_relu_fusion_cuts_modules_and_keeps_outputs():
    setup = _served("convnet", {})
    images = torch.stack(setup.make_requests(8, 0))
    before = len(list(setup.model.modules()))
    prepared = prepare_model(setup.model, InferenceConfig(fusion=True))
    after = len([m for m in prepared.module.modules() if not isinstance(m, nn.Identity)])
    assert after < before
    assert any("fused" in n and not n.startswith("fusion:") for n in prepared.notes)
    with torch.inference_mode():
        assert (setup.model(images) - prepared.module(images)).abs().max() <= 1e-5
    # nothing left to fold the second time; the reference model itself was not touched
    assert fuse_conv_bn_relu(prepared.module) == 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in setup.model.modules())


def test_queueing_in_the_batching_window_is_part_of_latency():
    model = nn.Linear(16, 4).eval()
    inputs = torch.randn(64, 16)

    def forward(indices):
        with torch.inference_mode():
            model(inputs[indices])

    arrivals = [0.01 + 0.002 * i for i in range(10)]  # all within 20 ms
    waited = serve_open_loop(arrivals, BatchingPolicy(64, 0.25), [forward])
    eager = serve_open_loop(arrivals, BatchingPolicy(64, 0.0), [forward])
    # The window holds the first request 250 ms for a batch that never fills: it waits it out.
    assert waited.latencies_s[0] >= 0.25
    assert statistics.median(waited.latencies_s) >= 0.2
    assert waited.batch_sizes == (10,)
    assert statistics.median(eager.latencies_s) < 0.1
    assert sum(eager.batch_sizes) == 10


def test_a_hopeless_queue_stops_the_run_and_counts_as_infinite_latency():
    def slow(indices):
        import time

        time.sleep(0.05)

    record = serve_open_loop(
        [0.001 * i for i in range(200)], BatchingPolicy(1, 0.0), [slow], give_up_after_s=0.2
    )
    assert record.error and record.error.startswith("overloaded")
    assert any(lat == float("inf") for lat in record.latencies_s)


def test_fp16_on_cpu_and_weight_only_without_torchao_are_refused_with_the_reason():
    why = refusal(
        InferenceConfig(serving_precision="fp16"), device="cpu", paddings=("longest",), variable_length=False
    )
    assert why and "fp16 on CPU" in why and "bf16" in why
    why = refusal(
        InferenceConfig(serving_precision="int8_weight_only", int8_backend="fbgemm"),
        device="cpu",
        paddings=("longest",),
        variable_length=False,
    )
    assert why and "weight-only" in why
    assert refusal(
        InferenceConfig(padding="packed"), device="cpu", paddings=("longest",), variable_length=True
    )
    assert refusal(InferenceConfig(), device="cpu", paddings=("longest",), variable_length=False) is None


def test_bad_knob_values_are_field_errors():
    with pytest.raises(ConfigError) as info:
        InferenceConfig.from_dict(
            {"batch_window_ms": -1, "max_batch_size": 0, "serving_precision": "int4", "max_bach_size": 2}
        )
    fields = {p.field: p for p in info.value.problems}
    assert {"max_bach_size"} == set(fields)  # unknown names first, with the guess
    assert "max_batch_size" in fields["max_bach_size"].fix
    with pytest.raises(ConfigError) as info:
        InferenceConfig.from_dict({"batch_window_ms": -1, "max_batch_size": 0, "serving_precision": "int4"})
    assert {p.field for p in info.value.problems} == {
        "batch_window_ms",
        "max_batch_size",
        "serving_precision",
    }


def test_gpt_packed_and_padded_layouts_give_the_same_logits():
    setup = _served("gpt", {"layers": 2, "d_model": 64, "heads": 4})
    prompts = setup.make_requests(6, 5)
    assert len({len(p) for p in prompts}) > 1  # variable lengths
    with torch.inference_mode():
        padded = setup.forward(setup.model, prompts, "longest")
        packed = setup.forward(setup.model, prompts, "packed")
        alone = torch.cat([setup.forward(setup.model, [p], "longest") for p in prompts])
    assert (padded - alone).abs().max() < 1e-4
    assert (packed - alone).abs().max() < 1e-4


def test_auc_and_memory_model():
    labels = torch.tensor([0, 0, 1, 1])
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    assert auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == pytest.approx(0.5)
    setup = _served("convnet", {})
    fp32, int8 = weight_bytes(setup.shape, "fp32"), weight_bytes(setup.shape, "int8_dynamic")
    assert int8 < fp32
    small = predicted_peak_bytes(setup.shape, InferenceConfig(max_batch_size=1))
    big = predicted_peak_bytes(setup.shape, InferenceConfig(max_batch_size=64))
    two = predicted_peak_bytes(setup.shape, InferenceConfig(max_batch_size=1, instances=2))
    assert small < big and small < two
