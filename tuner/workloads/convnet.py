"""The `convnet` workload: a small ResNet-like image classifier, served only.

It exists for inference tuning (Conv+BN+ReLU fusion); it has no training entry point, so
a training study of it is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialResult
from tuner.workloads.base import Workload, WorkloadParam

if TYPE_CHECKING:
    from tuner.inference.serving import ServingSetup


class ConvNetWorkload(Workload):
    name = "convnet"
    description = "ResNet-like conv net (Conv+BN+ReLU blocks, residuals, Linear head) for inference tuning"
    item_unit = "images"
    params = (
        WorkloadParam(
            "width", "int", 16, "channels of the first stage (x2, x4 in the next)", low=1, high=1024
        ),
        WorkloadParam("blocks_per_stage", "int", 1, "residual blocks per stage", low=1, high=16),
        WorkloadParam("classes", "int", 10, "output classes", low=2, high=100_000),
        WorkloadParam("image_size", "int", 32, "image height and width", low=8, high=1024),
    )

    def serving(self, params: Mapping[str, Any]) -> ServingSetup:
        from tuner.workloads.convnet_model import build_convnet_serving

        return build_convnet_serving(params)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        return TrialResult.failed(
            "convnet is an inference-only workload: tune it with a `kind: inference` space"
        )
