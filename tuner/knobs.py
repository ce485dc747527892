"""The catalogue of knobs a trial config has: their types, legal values and defaults.

One table, read by the search-space validator, `TrialConfig` and the docs, so a knob's
rules are written down once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tuner.errors import FieldProblem

KnobKind = Literal["int", "float", "categorical", "bool"]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")
GRAD_COMPRESSIONS: tuple[str, ...] = ("none", "fp16", "bf16", "powersgd")
#: NCCL's all-reduce algorithms and protocols a trial may pin ("default": NCCL picks per
#: message size and topology). Applied as NCCL_ALGO / NCCL_PROTO in each rank's environment.
NCCL_ALGOS: tuple[str, ...] = ("default", "ring", "tree")
NCCL_PROTOS: tuple[str, ...] = ("default", "simple", "ll", "ll128")
_NCCL_SPELLING = {"ring": "Ring", "tree": "Tree", "simple": "Simple", "ll": "LL", "ll128": "LL128"}


@dataclass(frozen=True)
class Knob:
    """One tunable knob: what values are legal and what it means."""

    name: str
    kind: KnobKind
    default: object
    help: str
    low: float | None = None  # inclusive lower bound of legal values
    high: float | None = None  # inclusive upper bound of legal values
    low_exclusive: bool = False
    high_exclusive: bool = False
    choices: tuple[object, ...] | None = None

    def legal_range_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        lo = "(" if self.low_exclusive else "["
        hi = ")" if self.high_exclusive else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        article = "an" if self.kind == "int" else "a"
        return f"{article} {self.kind} in {lo}{low}, {high}{hi}"

    def check(self, value: object) -> str | None:
        """Return why `value` is illegal for this knob, or None when it is legal."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be {self.legal_range_text()}"
        if self.kind == "categorical":
            return None if value in (self.choices or ()) else f"must be {self.legal_range_text()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.legal_range_text()}, got {type(value).__name__}"
        if self.kind == "int" and not float(value).is_integer():
            return f"must be an integer, {self.legal_range_text()}"
        if self.low is not None:
            if value < self.low or (self.low_exclusive and value == self.low):
                return f"must be {self.legal_range_text()}"
        if self.high is not None:
            if value > self.high or (self.high_exclusive and value == self.high):
                return f"must be {self.legal_range_text()}"
        return None


_KNOB_LIST: tuple[Knob, ...] = (
    Knob("micro_batch_size", "int", 8, "samples per forward/backward on one device", low=1),
    Knob(
        "gradient_accumulation_steps",
        "int",
        1,
        "micro batches per optimizer step",
        low=1,
    ),
    Knob("max_sequence_length", "int", 128, "tokens per sample (language models)", low=1),
    Knob("precision", "categorical", "fp32", "numeric precision of compute", choices=PRECISIONS),
    Knob("loss_scale", "float", 65536.0, "initial GradScaler scale (fp16 only)", low=0, low_exclusive=True),
    Knob(
        "loss_scale_growth_interval",
        "int",
        2000,
        "steps without overflow before the fp16 loss scale doubles",
        low=1,
    ),
    Knob("learning_rate", "float", 3e-4, "peak learning rate (AdamW)", low=0, low_exclusive=True, high=10),
    Knob(
        "warmup_ratio",
        "float",
        0.0,
        "share of steps with linear warmup before the cosine decay",
        low=0,
        high=1,
        high_exclusive=True,
    ),
    Knob("weight_decay", "float", 0.0, "AdamW decoupled weight decay", low=0, high=1),
    Knob("activation_checkpointing", "bool", False, "recompute each block's activations in backward"),
    Knob("compile", "bool", False, "torch.compile the model"),
    Knob("world_size", "int", 1, "processes (devices) one trial runs on", low=1, high=1024),
    Knob(
        "sharding_stage",
        "int",
        0,
        "0 DDP, 1 ZeRO-1 optimizer sharding, 2 FSDP2 keep params, 3 FSDP2 reshard params",
        low=0,
        high=3,
    ),
    Knob("bucket_cap_mb", "float", 25.0, "DDP gradient bucket size (stages 0-1)", low=0, low_exclusive=True),
    Knob(
        "grad_compression",
        "categorical",
        "none",
        "DDP communication hook (stages 0-1)",
        choices=GRAD_COMPRESSIONS,
    ),
    Knob(
        "nccl_algo",
        "categorical",
        "default",
        "NCCL all-reduce algorithm (NCCL_ALGO in each rank's environment; default: NCCL chooses)",
        choices=NCCL_ALGOS,
    ),
    Knob(
        "nccl_proto",
        "categorical",
        "default",
        "NCCL protocol (NCCL_PROTO in each rank's environment; default: NCCL chooses)",
        choices=NCCL_PROTOS,
    ),
)

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOB_LIST}

#: What a throughput study holds at the workload's default values unless the space frees
#: them (`free_knobs`) or an objective measures quality: each changes what the model learns
#: (the task, the data per update, the optimisation), so a config "faster" through them is
#: not the same training made faster. `effective_batch` is the product micro_batch_size x
#: gradient_accumulation_steps x world_size (its factors stay tunable, the product does not).
QUALITY_KNOBS: tuple[str, ...] = (
    "max_sequence_length",
    "effective_batch",
    "learning_rate",
    "warmup_ratio",
    "weight_decay",
)
#: `free_knobs: all` frees every one of QUALITY_KNOBS.
FREE_ALL = "all"


def coerce_and_check_fields(config: Any, catalogue: Mapping[str, Knob]) -> list[FieldProblem]:
    """Normalise a frozen config dataclass's fields to their knob's kind (an int given for a
    float knob, YAML `loss_scale: 1024`, is stored as a float; a whole float for an int knob
    as an int) and return a problem for each value its knob refuses. Shared by `TrialConfig`
    and the serving `InferenceConfig`, so both catalogues are read the same way."""
    problems: list[FieldProblem] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        knob = catalogue[f.name]
        if knob.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(config, f.name, value)
        if knob.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
            object.__setattr__(config, f.name, value)
        why = knob.check(value)
        if why:
            problems.append(FieldProblem(f.name, value, why, f"set {f.name} to {knob.legal_range_text()}"))
    return problems


def knob_names() -> list[str]:
    return list(KNOBS)


def closest_knob(name: str, catalogue: Mapping[str, Knob] | None = None) -> str | None:
    """The knob a misspelt name most likely meant, for 'did you mean' fixes: of the training
    knobs, or of another catalogue (the serving knobs)."""
    import difflib

    matches = difflib.get_close_matches(name, KNOBS if catalogue is None else catalogue, n=1, cutoff=0.6)
    return matches[0] if matches else None


def comm_environment(config: Any) -> dict[str, str]:
    """The environment a trial's ranks set for its communication knobs (`nccl_algo`,
    `nccl_proto`); empty when NCCL may choose. gloo (CPU ranks) ignores these variables."""
    env: dict[str, str] = {}
    algo = getattr(config, "nccl_algo", "default")
    proto = getattr(config, "nccl_proto", "default")
    if algo != "default":
        env["NCCL_ALGO"] = _NCCL_SPELLING[algo]
    if proto != "default":
        env["NCCL_PROTO"] = _NCCL_SPELLING[proto]
    return env
