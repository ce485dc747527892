"""Workload fusion (the DLRM's table-batched serving form), the generator's choice of it,
and torch.compile served at the instance's own thread count. Real models on this CPU."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from tests.inference_test_workloads import TinyServed
from tuner.inference.config import InferenceConfig
from tuner.inference.prepare import prepare_model
from tuner.inference.request import InferenceRequest, RampBudget
from tuner.inference.starting import plan_inference
from tuner.inference.trial import _Server, serving_setup
from tuner.space.search_space import SearchSpace
from tuner.workloads import get_workload, register_workload
from tuner.workloads.recsys_fused_model import TableBatchedDLRM

warnings.filterwarnings("ignore", category=DeprecationWarning)
register_workload(TinyServed)

RECSYS = {"tables": 4, "rows": 500, "dim": 16}


def _recsys():
    wl = get_workload("recsys")
    params = wl.resolve_params(RECSYS)
    return params, wl.serving(params)


def test_fused_recsys_is_one_table_lookup_with_the_reference_outputs():
    _, setup = _recsys()
    payloads, _labels = setup.heldout()
    with torch.inference_mode():
        reference = setup.forward(setup.model, payloads, "longest")
    prepared = prepare_model(setup.model, InferenceConfig(max_batch_size=64, fusion=True))
    modules = list(prepared.module.modules())
    assert not any(isinstance(m, nn.EmbeddingBag) for m in modules)
    assert sum(isinstance(m, nn.Embedding) for m in modules) == 1
    assert any(n.startswith("fused DLRM: 4 embedding tables into one lookup") for n in prepared.notes)
    with prepared.running():
        fused = setup.forward(prepared.module, payloads, "longest")
    assert (fused - reference).abs().max() <= 1e-5
    # the form written for the compiled graph (gather-multiply-sum) is the same function
    gathered = TableBatchedDLRM(setup.model.dlrm, compiled=True).eval()
    dense = torch.stack([p[0] for p in payloads])
    ids = torch.stack([p[1] for p in payloads])
    with torch.inference_mode():
        assert (torch.sigmoid(gathered(dense, ids)) - reference).abs().max() <= 1e-5
    # the reference model keeps its tables (prepare works on a copy)
    assert sum(isinstance(m, nn.EmbeddingBag) for m in setup.model.modules()) == 4


def test_a_model_without_a_fused_form_is_served_unchanged_and_says_so():
    setup = serving_setup("tiny-served", {"outlier": 0.0})
    prepared = prepare_model(setup.model, InferenceConfig(fusion=True))
    assert prepared.notes == ["fusion: the model has no Conv+BN and no fused serving form"]


SPACE = {
    "name": "tiny-fusion",
    "kind": "inference",
    "params": {
        "max_batch_size": {"type": "categorical", "choices": [1, 8, 64]},
        "fusion": {"type": "categorical", "choices": [False, True]},
        "compile_mode": {"type": "categorical", "choices": ["off", "default"]},
    },
}


def test_the_generator_fuses_only_when_the_fused_forward_times_faster_and_starts_one_compiled():
    space, setup = SearchSpace.from_dict(SPACE), serving_setup("tiny-served", {"outlier": 0.0})

    def plan(fused_s: float):
        return plan_inference(
            space, setup, slo_p99_ms=50, cpu_count=2, timer=lambda cfg, b: fused_s if cfg.fusion else 0.002
        )

    faster = plan(0.001)
    assert faster.starting[0] == {"max_batch_size": 64, "fusion": True, "compile_mode": "off"}
    assert {"max_batch_size": 64, "fusion": True, "compile_mode": "default"} in faster.starting
    assert any("compiled" in r for r in faster.reasons)
    assert any(r.startswith("fusion at batch 64: 1.00 ms vs 2.00 ms") for r in faster.reasoning)
    slower = plan(0.003)
    assert all(s["fusion"] is False for s in slower.starting)
    assert any("do not fuse" in r for r in slower.reasoning)


def test_a_compiled_model_is_not_compiled_again_in_its_load_steps():
    """torch.compile guards on the intra-op thread count: warm-up must run at the count the
    instance serves with, or the first load step spends seconds compiling (seen: a recsys
    step offered 434k QPS served 71k with p99 483 ms)."""
    from torch._dynamo.utils import counters

    params, setup = _recsys()
    config = InferenceConfig(max_batch_size=32, threads_per_instance=1, compile_mode="default")
    request = InferenceRequest(
        "recsys", params, config, ramp=RampBudget(step_s=0.1, max_steps=1, min_requests=50, max_requests=400)
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the process's count differs from the instance's
    server = _Server(request, setup, [prepare_model(setup.model, config)])
    try:
        server.warm_up()
        compiled = sum(counters["frames"].values())
        point, _record, _ = server.step(2000.0, seed=1)
        assert sum(counters["frames"].values()) == compiled
        assert point.p99_ms < 1000
        assert torch.get_num_threads() == 2  # the instance's count was restored after warm-up
    finally:
        server.close()
        torch.set_num_threads(before)
