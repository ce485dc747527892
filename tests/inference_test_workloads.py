"""Serving workloads the inference tests register: a tiny classifier, and the same model
with an outlier activation channel, the known way int8 dynamic quantization fails (one
huge feature sets the activation scale and every small feature rounds to zero)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialResult
from tuner.workloads import Workload, WorkloadParam


def _setup(outlier: float) -> Any:
    import torch
    from torch import nn

    from tuner.inference.serving import ServingSetup, ServingShape

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    if outlier:
        with torch.no_grad():
            # Channel 0 of every input is huge; its weights are tiny so the fp32 output is
            # still driven by the 31 small features. int8 activations lose exactly those.
            model[0].weight[:, 0] *= 1.0 / outlier

    def make_requests(count: int, seed: int) -> list[Any]:
        x = torch.randn(count, 32, generator=torch.Generator().manual_seed(seed))
        x[:, 0] = outlier or x[:, 0]
        return list(x)

    return ServingSetup(
        model=model,
        make_requests=make_requests,
        forward=lambda module, requests, padding: module(torch.stack(list(requests))),
        heldout=lambda: (make_requests(256, 123), None),
        accuracy_kind="classes",
        shape=ServingShape(
            linear_params=32 * 128 + 128 * 10, other_params=138, activation_bytes_per_item=4.0 * 170
        ),
    )


class TinyServed(Workload):
    name = "tiny-served"
    params = (WorkloadParam("outlier", "float", 0.0, "value of input channel 0 (0: ordinary inputs)", low=0),)

    def serving(self, params: Mapping[str, Any]) -> Any:
        return _setup(float(params["outlier"]))

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        return TrialResult.failed("serving only")
