"""`ServingSetup`: what a workload hands the inference engine (its inference entry point).

A workload serves by implementing `Workload.serving(params) -> ServingSetup` (see
docs/workloads.md). The engine owns the knobs (batching, precision, fusion, compile,
instances); the setup owns the model and what a request is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How the accuracy guard compares a config's outputs with the fp32 eager reference.
ACCURACY_KINDS: tuple[str, ...] = ("lm_logits", "ctr_auc", "classes")


@dataclass(frozen=True)
class ServingShape:
    """The served model's size for the memory model (`tuner.inference.memory`)."""

    linear_params: int  # weights of Linear layers (what int8 quantizes)
    other_params: int  # embeddings, convs, norms, biases: stay in the serving precision / fp32
    activation_bytes_per_item: float  # fp32 bytes of live activations per request per length unit
    mean_length: float = 1.0  # mean request length (tokens); 1 for fixed-size requests
    max_length: int = 1


@dataclass(frozen=True)
class ServingSetup:
    #: the fp32 eval-mode torch module every config starts from (and the reference)
    model: Any
    #: (count, seed) -> request payloads, lengths drawn from the workload's distribution
    make_requests: Callable[[int, int], list[Any]]
    #: (model, payloads, padding) -> one output row per payload (a torch tensor)
    forward: Callable[[Any, Sequence[Any], str], Any]
    #: the fixed held-out requests (and labels for ctr_auc) the accuracy guard scores
    heldout: Callable[[], tuple[list[Any], Any]]
    accuracy_kind: str
    shape: ServingShape
    request_length: Callable[[Any], int] = lambda payload: 1
    paddings: tuple[str, ...] = ("longest",)  # what `forward` implements
    bucket_edges: tuple[int, ...] = ()  # upper length edges for padding: buckets
    #: float inputs a bf16 model must get as bf16 (the setup's forward casts by this)
    notes: tuple[str, ...] = field(default=())

    def bucket_of(self, length: int) -> int:
        for edge in self.bucket_edges:
            if length <= edge:
                return edge
        return self.bucket_edges[-1] if self.bucket_edges else 0
