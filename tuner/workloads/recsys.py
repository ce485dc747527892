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

# Mirrors recsys_model's default MLP sizes; kept here so `shape` needs no torch.
_BOTTOM_HIDDEN = 64
_TOP_HIDDEN = 64  # then half of it (recsys_model.top_sizes)


def recsys_parameter_count(
    *, tables: int, rows: int, dim: int, dense_features: int, bottom_hidden: int = _BOTTOM_HIDDEN, top_hidden: int = _TOP_HIDDEN
) -> int:
    """Parameters of `recsys_model.DLRM`: embedding tables plus bottom and top MLPs."""
    pairs = (tables + 1) * tables // 2
    bottom = (dense_features, bottom_hidden, dim)
    top = (dim + pairs, top_hidden, max(1, top_hidden // 2), 1)
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
            "dim",
            "int",
            16,
            "embedding dimension (also the bottom MLP's output)",
            low=1,
            high=4096,
            tunable=True,
            changes_shape=True,
        ),
        WorkloadParam("dense_features", "int", 13, "dense input features", low=1, high=4096),
        WorkloadParam(
            "bottom_hidden", "int", _BOTTOM_HIDDEN, "bottom MLP hidden width", low=1, high=65536, tunable=True, changes_shape=True
        ),
        WorkloadParam(
            "top_hidden", "int", _TOP_HIDDEN, "top MLP first hidden width (the second is half)", low=2, high=65536, tunable=True, changes_shape=True
        ),
        WorkloadParam("dropout", "float", 0.0, "dropout after each hidden MLP layer", low=0.0, high=0.9, tunable=True),
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
                tables=p["tables"],
                rows=p["rows"],
                dim=p["dim"],
                dense_features=p["dense_features"],
                bottom_hidden=p.get("bottom_hidden", _BOTTOM_HIDDEN),
                top_hidden=p.get("top_hidden", _TOP_HIDDEN),
            ),
            "workload": self.name,
        }

    def serving(self, params: Mapping[str, Any]) -> ServingSetup:
        from tuner.workloads.recsys_serving_model import build_recsys_serving

        return build_recsys_serving(params)

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        from tuner.workloads.recsys_model import build_dlrm

        return build_dlrm(params, micro_batch_size=config.micro_batch_size, device=device)
