"""Request and response bodies: `StudyCreate / StudyRead / Page[StudyRead]` and friends.

The core of `StudyCreate` is `tuner.study.spec.StudySpec`'s fields, so a study created
through REST means exactly what the same study means on the command line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tuner.names import STUDY_NAME_RE

T = TypeVar("T")
NAME_PATTERN = STUDY_NAME_RE.pattern
ExportFormat = Literal["json", "yaml", "torch"]
TellStatus = Literal["ok", "oom", "failed", "pruned", "infeasible"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


class StudyCreate(Strict):
    """A study to create. `run: false` makes an ask/tell study whose trials run elsewhere."""

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    workload: str | None = Field(
        None, max_length=64, description="a registered workload name (GET /api/v1/workloads); never a path"
    )
    workload_params: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] | str = Field(description="the search space as an object, or as YAML/JSON text")
    objectives: list[str] = Field(default_factory=lambda: ["throughput"], max_length=4)
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = Field(20, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0)
    budget: dict[str, Any] | None = None
    memory_limit_bytes: int | None = Field(None, gt=0)
    seed: int = 0
    baseline: bool = True
    use_generator: bool = True
    workers: int = Field(1, ge=1, le=64)
    device: str = "auto"
    run: bool = Field(True, description="run trials on the server; false for ask/tell from your own jobs")


class Progress(BaseModel):
    n_trials: int | None
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    total: int
    fraction: float | None


class TrialSummary(BaseModel):
    number: int
    values: list[float] | None
    config: dict[str, Any] | None
    metrics: dict[str, Any]


class StudyRead(BaseModel):
    name: str
    workload: str
    mode: str
    state: str
    reason: str | None
    objectives: list[str]
    directions: list[str]
    sampler: str | None
    created_at: datetime | None
    updated_at: datetime | None
    progress: Progress
    best: TrialSummary | None = Field(None, description="best so far (first objective)")
    pareto_size: int | None = None
    spec: dict[str, Any] | None = None


class TrialRead(BaseModel):
    number: int
    state: str = Field(description="Optuna state: RUNNING, COMPLETE, PRUNED, FAIL, WAITING")
    status: str | None = Field(None, description="tuner status: ok, oom, failed, pruned, infeasible")
    values: list[float] | None
    config: dict[str, Any] | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    intermediate_values: dict[int, float]
    telemetry: dict[str, Any]
    reason: str | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    duration_s: float | None


class AskRead(BaseModel):
    study: str
    trial_number: int
    config: dict[str, Any]
    params: dict[str, Any]


class ReportCreate(Strict):
    step: int = Field(ge=0)
    value: float


class ReportRead(BaseModel):
    prune: bool


class TellCreate(Strict):
    values: list[float] | dict[str, float] | None = Field(
        None, description="objective values, as a list in objective order or keyed by objective"
    )
    status: TellStatus = "ok"
    metrics: dict[str, float] = Field(default_factory=dict)
    telemetry: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = Field(None, max_length=4000)


class TellRead(BaseModel):
    trial_number: int
    state: str


class ResultExport(BaseModel):
    study: str
    format: ExportFormat
    content: str = Field(description="the rendered config(s) in the requested format")
    trials: list[TrialSummary]


class SpaceValidate(Strict):
    space: dict[str, Any] | str


class SpaceValidation(BaseModel):
    valid: bool
    problems: list[dict[str, Any]]
    space: dict[str, Any] | None


class WorkloadRead(BaseModel):
    name: str
    description: str
    item_unit: str
    params: list[dict[str, Any]]
    replay_tables: list[str] | None = Field(None, description="server-side tables the replay workload may name")


class HardwareRead(BaseModel):
    host: str
    probed_at: datetime
    profile: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    # shown to admin tokens only (api.routes.health): anonymous callers get `ready` alone
    database: str | None = None
    schema_revision: str | None = None
    detail: str | None = None
