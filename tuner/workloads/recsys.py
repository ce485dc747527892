"""The `recsys` workload: a DLRM-style click-through-rate model on synthetic clicks.

Describes the workload without importing torch; the model and data live in
`recsys_model`. Throughput counts samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.types import TrialConfig
from tuner.workloads.base import TrainableWorkload, WorkloadParam

if TYPE_CHECKING:
    from tuner.inference.serving import ServingSetup
    from tuner.trial.setup import TrainingSetup

# Mirrors recsys_model's fixed MLP sizes; kept here so `shape` needs no torch.
_BOTTOM_HIDDEN = 64
_TOP_HIDDEN = (64, 32)


def recsys_parameter_count(*, tables: int, rows: int, dim: int, dense_features: int) -> int:
    """Parameters of `recsys_model.DLRM`: embedding tables plus bottom and top MLPs."""
    pairs = (tables + 1) * tables // 2
    bottom = (dense_features, _BOTTOM_HIDDEN, dim)
    top = (dim + pairs, *_TOP_HIDDEN, 1)
    mlps = sum(a * b + b for sizes in (bottom, top) for a, b in itertools.pairwise(sizes))
    return tables * rows * dim + mlps


class RecsysWorkload(TrainableWorkload):
    name = "recsys"
    description = (
        "DLRM-style recommender (EmbeddingBag tables, bottom MLP, pairwise dot interactions, top MLP) "
        "on synthetic clicks with a planted signal"
    )
    item_unit = "samples"
    params = (
        WorkloadParam(
            "tables", "int", 4, "categorical features, one EmbeddingBag table each", low=1, high=1024
        ),
        WorkloadParam("rows", "int", 10000, "rows per embedding table", low=8, high=1_000_000_000),
        WorkloadParam(
            "dim", "int", 16, "embedding dimension (also the bottom MLP's output)", low=1, high=4096
        ),
        WorkloadParam("dense_features", "int", 13, "dense input features", low=1, high=4096),
    )

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        return TrialConfig(micro_batch_size=256, precision="fp32", learning_rate=1e-3)

    def shape(self, params: Mapping[str, Any]) -> dict[str, Any]:
        p = params  # resolved: every parameter is present
        return {
            "tables": p["tables"],
            "rows": p["rows"],
            "dim": p["dim"],
            "params": recsys_parameter_count(
                tables=p["tables"], rows=p["rows"], dim=p["dim"], dense_features=p["dense_features"]
            ),
            "workload": self.name,
        }

    def serving(self, params: Mapping[str, Any]) -> ServingSetup:
        from tuner.workloads.recsys_serving_model import build_recsys_serving

        return build_recsys_serving(params)

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        from tuner.workloads.recsys_model import build_dlrm

        return build_dlrm(params, micro_batch_size=config.micro_batch_size, device=device)
