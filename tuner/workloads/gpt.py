"""The `gpt` workload: a GPT-2-style byte-level language model on real text.

Describes the workload without importing torch; the model lives in `gpt_model`, the data
in `text_corpus`. Throughput counts tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, WorkloadError
from tuner.types import TrialConfig
from tuner.workloads.base import TrainableWorkload, WorkloadParam

if TYPE_CHECKING:
    from tuner.inference.serving import ServingSetup
    from tuner.trial.setup import TrainingSetup

BYTE_VOCAB = 256


def gpt_parameter_count(*, layers: int, d_model: int, vocab_size: int, seq: int) -> int:
    """Parameters of `gpt_model.GPT`, counted analytically (no torch needed).

    Per block: two LayerNorms (2·2d), qkv (3d²+3d), attention out (d²+d), MLP (4d²+4d and
    4d²+d) = 12d²+13d. Plus the tied token embedding (V·d), positions (seq·d), final norm (2d).
    """
    block = 12 * d_model * d_model + 13 * d_model
    return vocab_size * d_model + seq * d_model + layers * block + 2 * d_model


def gpt_flops_per_token(*, params: int, layers: int, d_model: int, seq: int) -> float:
    """Training FLOPs per token: 6·params (forward+backward matmuls) + 12·L·d·seq (attention)."""
    return 6.0 * params + 12.0 * layers * d_model * seq


class GPTWorkload(TrainableWorkload):
    name = "gpt"
    description = (
        "GPT-2-style decoder-only transformer (pre-LN, SDPA causal attention, tied embeddings) "
        "trained on byte-level text of the Python standard library's source"
    )
    item_unit = "tokens"
    params = (
        WorkloadParam("layers", "int", 2, "transformer blocks", low=1, high=256, tunable=True, changes_shape=True),
        WorkloadParam(
            "d_model", "int", 64, "hidden size (divisible by heads)", low=8, high=65536, tunable=True, changes_shape=True
        ),
        WorkloadParam("heads", "int", 4, "attention heads", low=1, high=512, tunable=True, changes_shape=True),
        WorkloadParam(
            "vocab_size",
            "int",
            BYTE_VOCAB,
            "embedding rows; data are bytes (ids < 256), larger vocabularies only add unused rows",
            low=BYTE_VOCAB,
            high=1_000_000,
        ),
        WorkloadParam("dropout", "float", 0.0, "dropout probability", low=0.0, high=0.9, tunable=True),
    )

    def resolve_params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resolved = super().resolve_params(given)
        if resolved["d_model"] % resolved["heads"]:
            raise WorkloadError(
                FieldProblem(
                    "params.heads",
                    resolved["heads"],
                    f"does not divide d_model={resolved['d_model']}",
                    "choose heads so that d_model / heads is a whole number (e.g. d_model 64, heads 4)",
                )
            )
        return resolved

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        return TrialConfig(micro_batch_size=8, max_sequence_length=128, precision="fp32", learning_rate=1e-3)

    def shape(self, params: Mapping[str, Any]) -> dict[str, Any]:
        p = params  # resolved: every parameter is present
        seq = self.default_config(p).max_sequence_length
        count = gpt_parameter_count(
            layers=p["layers"], d_model=p["d_model"], vocab_size=p["vocab_size"], seq=seq
        )
        return {
            "layers": p["layers"],
            "d": p["d_model"],
            "heads": p["heads"],
            "seq": seq,
            "vocab": p["vocab_size"],
            "params": count,
            "flops_per_token": gpt_flops_per_token(
                params=count, layers=p["layers"], d_model=p["d_model"], seq=seq
            ),
            "workload": self.name,
        }

    #: longest prompt the served model takes (its position table)
    serving_max_length = 256

    def serving(self, params: Mapping[str, Any]) -> ServingSetup:
        from tuner.workloads.gpt_serving_model import build_gpt_serving

        return build_gpt_serving(params, max_length=self.serving_max_length)

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        from tuner.workloads.gpt_model import build_gpt

        return build_gpt(
            params,
            seq=config.max_sequence_length,
            micro_batch_size=config.micro_batch_size,
            device=device,
        )
