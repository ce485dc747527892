"""A DLRM-style recommender and synthetic click data with a planted signal.

Model: one `EmbeddingBag` per categorical feature, a bottom MLP over the dense features
(dense -> 64 -> dim), pairwise dot products between the bottom output and every
embedding, and a top MLP over [bottom output, dot products] to one click logit.

Data: labels come from a fixed hidden logistic model of the dense features and a few
"hot" ids per table, so there is something real to learn: the loss falls well below the
ln 2 of guessing, and its floor is the hidden model's own entropy.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner.trial.setup import TrainingSetup

BOTTOM_HIDDEN = 64
TOP_HIDDEN = (64, 32)
#: The hidden model and the validation set use fixed seeds, independent of the trial's,
#: so every trial learns the same task and is scored on the same held-out clicks.
HIDDEN_MODEL_SEED = 20240917
VALIDATION_SEED = 4321
VALIDATION_BATCHES = 4
#: Samples per validation batch, whatever the config's micro batch: every trial is scored
#: on the same VALIDATION_BATCHES x VALIDATION_BATCH_SAMPLES held-out clicks.
VALIDATION_BATCH_SAMPLES = 1024
HOT_IDS_PER_TABLE = 8
HOT_ID_SHARE = 0.5  # share of lookups that hit a hot id (real click logs are skewed too)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # dense, ids (batch, tables), labels


def mlp(sizes: tuple[int, ...], *, last_activation: bool, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def top_sizes(top_hidden: int) -> tuple[int, int]:
    """The top MLP's hidden widths: `top_hidden`, then half of it (64 -> 64, 32)."""
    return top_hidden, max(1, top_hidden // 2)


def interaction_pairs(tables: int) -> int:
    """Distinct pairs among the bottom output and the `tables` embeddings."""
    vectors = tables + 1
    return vectors * (vectors - 1) // 2


class DLRM(nn.Module):
    def __init__(
        self,
        *,
        tables: int,
        rows: int,
        dim: int,
        dense_features: int,
        bottom_hidden: int = BOTTOM_HIDDEN,
        top_hidden: int = TOP_HIDDEN[0],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))
        self.bottom = mlp((dense_features, bottom_hidden, dim), last_activation=True, dropout=dropout)
        self.top = mlp((dim + interaction_pairs(tables), *top_sizes(top_hidden), 1), last_activation=False, dropout=dropout)
        upper = torch.triu_indices(tables + 1, tables + 1, offset=1)
        self.register_buffer("pair_rows", upper[0], persistent=False)
        self.register_buffer("pair_cols", upper[1], persistent=False)
        for embedding in self.embeddings:
            # DLRM's uniform(-1/sqrt(rows), 1/sqrt(rows)) would make tiny dot products for
            # large tables; a fixed small scale keeps the interactions informative at init.
            nn.init.uniform_(embedding.weight, -0.05, 0.05)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        bottom = self.bottom(dense)
        # Each row is one bag of one id: ids[:, t:t+1] has shape (batch, 1).
        embedded = [table(ids[:, t : t + 1]) for t, table in enumerate(self.embeddings)]
        vectors = torch.stack([bottom, *embedded], dim=1)  # (batch, tables + 1, dim)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))
        pairs = dots[:, self.pair_rows, self.pair_cols]
        return self.top(torch.cat([bottom, pairs], dim=1)).squeeze(1)

    def fused_for_serving(self, *, compiled: bool) -> tuple[nn.Module, str]:
        """The same model with its tables batched into one lookup and a fused interaction
        (`tuner.workloads.recsys_fused_model`); what an inference config's `fusion: true` serves."""
        from tuner.workloads.recsys_fused_model import TableBatchedDLRM

        form = "gather-multiply-sum (one loop once compiled)" if compiled else "one bmm + flat gather"
        return (
            TableBatchedDLRM(self, compiled=compiled),
            f"fused DLRM: {len(self.embeddings)} embedding tables into one lookup, pairwise dots as {form}",
        )


def click_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    dense, ids, labels = batch
    logits = model(dense, ids)
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


class ClickData:
    """Synthetic clicks from a hidden logistic model, drawn on the device."""

    def __init__(self, *, tables: int, rows: int, dense_features: int, device: torch.device) -> None:
        self.tables, self.rows, self.dense_features = tables, rows, dense_features
        hidden = torch.Generator().manual_seed(HIDDEN_MODEL_SEED)
        # Dense weights with norm ~2 and hot-id effects of about +-1.5: a strong, learnable
        # signal that still leaves label noise (the loss floor is well above 0).
        self.dense_weight = (torch.randn(dense_features, generator=hidden) * (2.0 / dense_features**0.5)).to(
            device
        )
        self.hot_effect = (torch.randn(tables, HOT_IDS_PER_TABLE, generator=hidden) * 1.5).to(device)
        self.hot_count = min(HOT_IDS_PER_TABLE, rows)
        self.table_index = torch.arange(tables, device=device)

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        dense, ids, labels, _ = self.batch_with_truth(size, generator)
        return dense, ids, labels

    def batch_with_truth(
        self, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch and the hidden model's click probability of each sample."""
        device = generator.device
        dense = torch.randn(size, self.dense_features, generator=generator, device=device)
        is_hot = torch.rand(size, self.tables, generator=generator, device=device) < HOT_ID_SHARE
        hot_ids = torch.randint(0, self.hot_count, (size, self.tables), generator=generator, device=device)
        any_ids = torch.randint(0, self.rows, (size, self.tables), generator=generator, device=device)
        ids = torch.where(is_hot, hot_ids, any_ids)
        dense, ids = dense.to(self.dense_weight.device), ids.to(self.dense_weight.device)
        hot = ids < self.hot_count
        effects = self.hot_effect[self.table_index, ids.clamp(max=self.hot_count - 1)] * hot
        logits = dense @ self.dense_weight + effects.sum(dim=1)
        uniform = torch.rand(size, generator=generator, device=device).to(logits.device)
        probability = torch.sigmoid(logits)
        labels = (uniform < probability).float()
        return dense, ids, labels, probability


def click_auc(model: nn.Module, batches: Any, val_loss: float | None = None) -> dict[str, float]:
    """The recsys task metrics on the held-out clicks: the model's ROC AUC (`auc`) and,
    for scale, the AUC of the hidden model that planted the labels (`auc_planted`, the
    best any model can do on these clicks; 0.5 is guessing)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scores = torch.cat([model(dense, ids).float() for dense, ids, _, _ in _with_truth(batches)])
    finally:
        model.train(was_training)
    labels = torch.cat([labels for _, _, labels, _ in _with_truth(batches)])
    truth = torch.cat([truth for _, _, _, truth in _with_truth(batches)])
    metrics = {"auc": roc_auc(scores, labels)}
    if truth.numel():
        metrics["auc_planted"] = roc_auc(truth, labels)
    return {k: v for k, v in metrics.items() if v is not None}


def _with_truth(batches: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b[0], b[1], b[2], b.truth if isinstance(b, ValidationClicks) else b[2][:0]) for b in batches]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """ROC AUC by the rank statistic (ties share their mean rank); None with one class."""
    scores, labels = scores.detach().float().cpu(), labels.detach().float().cpu()
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return None
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float32)
    # ties: every member of a run of equal scores gets the run's mean rank
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if unique.numel() < scores.numel():
        ends = torch.cumsum(counts, 0).float()
        mean_rank = ends - (counts.float() - 1) / 2
        ranks[order] = mean_rank[inverse]
    rank_sum = float(ranks[labels > 0.5].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class ValidationClicks(tuple):  # a (dense, ids, labels) batch the loss reads as is
    """A validation batch that also carries the hidden model's click probabilities."""

    truth: torch.Tensor


def fixed_validation_clicks(data: ClickData, device: str) -> list[ValidationClicks]:
    """The held-out clicks: fixed seed, fixed count, independent of the config."""
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    batches = []
    for _ in range(VALIDATION_BATCHES):
        dense, ids, labels, truth = data.batch_with_truth(VALIDATION_BATCH_SAMPLES, generator)
        batch = ValidationClicks((dense, ids, labels))
        batch.truth = truth
        batches.append(batch)
    return batches


def dlrm_mlp_parameters(
    *, tables: int, dim: int, dense_features: int, bottom_hidden: int = BOTTOM_HIDDEN, top_hidden: int = TOP_HIDDEN[0]
) -> int:
    """Parameters of the bottom and top MLPs (weights and biases)."""
    bottom = (dense_features, bottom_hidden, dim)
    top = (dim + interaction_pairs(tables), *top_sizes(top_hidden), 1)
    return sum(a * b + b for sizes in (bottom, top) for a, b in itertools.pairwise(sizes))


def build_dlrm(params: Mapping[str, Any], *, micro_batch_size: int, device: str) -> TrainingSetup:
    tables, rows, dim = int(params["tables"]), int(params["rows"]), int(params["dim"])
    dense_features = int(params["dense_features"])
    widths = {
        "bottom_hidden": int(params.get("bottom_hidden", BOTTOM_HIDDEN)),
        "top_hidden": int(params.get("top_hidden", TOP_HIDDEN[0])),
    }
    dropout = float(params.get("dropout", 0.0))
    model = DLRM(tables=tables, rows=rows, dim=dim, dense_features=dense_features, dropout=dropout, **widths).to(device)
    data = ClickData(tables=tables, rows=rows, dense_features=dense_features, device=torch.device(device))
    validation = fixed_validation_clicks(data, device)
    mlp_params = dlrm_mlp_parameters(tables=tables, dim=dim, dense_features=dense_features, **widths)
    # Matmul FLOPs of the MLPs (6 per parameter for forward+backward) plus the pairwise
    # dot products; embedding lookups move memory rather than doing math.
    interaction_flops = 6.0 * (tables + 1) ** 2 * dim
    return TrainingSetup(
        model=model,
        make_batch=data.batch,
        loss_fn=lambda m, b: click_loss(m, b),
        items_per_sample=1,
        # The MLPs are the checkpointed blocks; the runner wraps their forward.
        blocks=(model.bottom, model.top),
        validation_batches=validation,
        flops_per_item=6.0 * mlp_params + interaction_flops,
        validation_metrics=click_auc,
    )
