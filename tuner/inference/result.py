"""`InferenceResult`: what one serving trial measured, as plain data (stored as JSON)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class InferenceStatus(StrEnum):
    OK = "ok"
    INACCURATE = "inaccurate"  # outputs past the workload's tolerance vs the fp32 eager reference
    OVER_SLO = "over_slo"  # no rate tried kept p99 under the SLO
    REFUSED = "refused"  # the hardware or library cannot run it; never launched
    INFEASIBLE = "infeasible"  # the memory model predicts it does not fit; never launched
    FAILED = "failed"


@dataclass(frozen=True)
class RatePoint:
    """One step of the rate ramp: offered Poisson rate and what the server did with it."""

    offered_qps: float
    achieved_qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    mean_batch: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InferenceResult:
    status: InferenceStatus
    #: the highest offered rate whose p99 stayed <= the SLO (achieved QPS at it); 0 if none
    qps: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None  # at that rate
    #: p99 at the study's fixed target rate (objective "p99_at_qps"), when one is set
    p99_at_target_ms: float | None = None
    slo_p99_ms: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    predicted_peak_bytes: int | None = None
    batch_histogram: dict[str, int] = field(default_factory=dict)  # batch size -> batches
    latency_histogram_ms: dict[str, int] = field(default_factory=dict)  # bucket upper edge -> requests
    ramp: tuple[RatePoint, ...] = ()
    accuracy: dict[str, float] = field(default_factory=dict)
    linear_weight_bytes: int | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, InferenceStatus):
            object.__setattr__(self, "status", InferenceStatus(self.status))
        object.__setattr__(
            self, "ramp", tuple(p if isinstance(p, RatePoint) else RatePoint(**p) for p in self.ramp)
        )
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def ok(self) -> bool:
        return self.status is InferenceStatus.OK

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["status"] = self.status.value
        data["ramp"] = [p.to_dict() for p in self.ramp]
        data["notes"] = list(self.notes)
        return _finite(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def refused(cls, reason: str, status: InferenceStatus = InferenceStatus.REFUSED) -> InferenceResult:
        return cls(status=status, reason=reason)


def _finite(value: Any) -> Any:
    """JSON-safe: strict stores reject NaN/inf (an unsustainable rate's p99 is inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
