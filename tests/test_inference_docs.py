"""docs/workloads.md's inference entry-point sample runs as written: registered, served,
load-tested, and held to the accuracy guard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tuner.workloads
from tuner.inference.config import InferenceConfig
from tuner.inference.request import InferenceRequest, RampBudget
from tuner.inference.trial import run_inference_trial
from tuner.workloads import get_workload

DOC = Path(__file__).resolve().parents[1] / "docs" / "workloads.md"


@pytest.fixture
def registry_restored(monkeypatch):
    # The sample registers its workload from a module no worker process can import
    # ("docs_sample"): left registered, every later local worker would fail to start.
    monkeypatch.setattr(tuner.workloads, "_REGISTERED", dict(tuner.workloads._REGISTERED))


def test_the_documented_inference_entry_point_serves(registry_restored):
    text = DOC.read_text()
    sample = re.search(r"<!-- inference-sample -->\n```python\n(.*?)```", text, re.S)
    assert sample, "the sample block is missing from docs/workloads.md"
    exec(compile(sample.group(1), str(DOC), "exec"), {"__name__": "docs_sample"})
    workload = get_workload("risk-scorer")
    assert workload.serves
    params = workload.resolve_params({})
    result = run_inference_trial(
        InferenceRequest(
            "risk-scorer",
            params,
            InferenceConfig(max_batch_size=16, batch_window_ms=1, serving_precision="bf16"),
            slo_p99_ms=200,
            ramp=RampBudget(step_s=0.15, max_steps=2, min_requests=30, max_requests=1000),
        )
    )
    assert result.ok, result.reason
    assert result.qps > 0 and result.accuracy["top1_agreement"] >= 0.95
    assert sum(result.batch_histogram.values()) > 0 and result.peak_memory_bytes
