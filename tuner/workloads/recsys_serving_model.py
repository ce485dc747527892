"""The recsys workload's inference entry point: click-through-rate scoring (the guide's
recommendation and risk-model serving cases).

A request is one user-item pair: dense features and one id per table; the answer is the
click probability. The served DLRM is first fitted briefly to the synthetic clicks (a few
Adam steps), so the held-out AUC the accuracy guard compares means something: an untrained
model scores about 0.5, and so would a broken one. The tables keep their initial rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tuner.inference.serving import ServingSetup, ServingShape
from tuner.workloads.recsys_model import DLRM, ClickData, click_loss

MODEL_SEED = 11
FIT_STEPS, FIT_BATCH = 25, 2048
HELDOUT_SEED = 2718
HELDOUT_REQUESTS = 4096


@functools.lru_cache(maxsize=2)
def fitted_dlrm(tables: int, rows: int, dim: int, dense_features: int) -> tuple[DLRM, ClickData]:
    torch.manual_seed(MODEL_SEED)
    model = DLRM(tables=tables, rows=rows, dim=dim, dense_features=dense_features)
    data = ClickData(tables=tables, rows=rows, dense_features=dense_features, device=torch.device("cpu"))
    fit_batch = data.batch(FIT_BATCH, torch.Generator().manual_seed(MODEL_SEED))
    # Only the MLPs are fitted: an Adam step over every embedding row (millions) would cost
    # seconds each; the dense features carry most of the planted signal (held-out AUC ~0.7).
    model.embeddings.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps this small are mostly OpenMP hand-offs on a busy machine
    try:
        for _ in range(FIT_STEPS):
            optimizer.zero_grad(set_to_none=True)
            click_loss(model, fit_batch).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), data


class ClickScorer(nn.Module):
    def __init__(self, dlrm: DLRM) -> None:
        super().__init__()
        self.dlrm = dlrm

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dlrm(dense, ids).float())


def build_recsys_serving(params: Mapping[str, Any]) -> ServingSetup:
    tables, rows, dim, dense_features = (int(params[k]) for k in ("tables", "rows", "dim", "dense_features"))
    dlrm, data = fitted_dlrm(tables, rows, dim, dense_features)
    model = ClickScorer(dlrm).eval()

    def make_requests(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dense, ids, _labels = data.batch(count, torch.Generator().manual_seed(seed))
        return list(zip(dense, ids, strict=True))

    def forward(
        module: nn.Module, requests: Sequence[tuple[torch.Tensor, torch.Tensor]], padding: str
    ) -> torch.Tensor:
        dense = torch.stack([r[0] for r in requests])
        ids = torch.stack([r[1] for r in requests])
        return module(dense, ids)

    def heldout() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        dense, ids, labels = data.batch(HELDOUT_REQUESTS, torch.Generator().manual_seed(HELDOUT_SEED))
        return list(zip(dense, ids, strict=True)), labels

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    pairs = (tables + 1) * tables // 2
    return ServingSetup(
        model=model,
        make_requests=make_requests,
        forward=forward,
        heldout=heldout,
        accuracy_kind="ctr_auc",
        shape=ServingShape(
            linear_params=linear,
            other_params=total - linear,
            # embedded vectors, their pairwise dots and the MLP activations, per request
            activation_bytes_per_item=4.0 * ((tables + 1) * dim * 2 + (tables + 1) ** 2 + pairs + 256),
        ),
    )
