"""Request and response bodies: `StudyCreate / StudyRead / Page[StudyRead]` and friends.

The core of `StudyCreate` is `tuner.study.spec.StudySpec`'s fields, so a study created
through REST means exactly what the same study means on the command line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from tuner.names import STUDY_NAME_RE
from tuner.study.spec import (
    DEFAULT_HEARTBEAT_GRACE_S,
    DEFAULT_TRIAL_TIMEOUT_S,
    DEVICE_RE,
    MIN_HEARTBEAT_GRACE_S,
    SEED_MAX,
)

T = TypeVar("T")
NAME_PATTERN = STUDY_NAME_RE.pattern
ExportFormat = Literal["json", "yaml", "torch"]
TellStatus = Literal["ok", "oom", "failed", "pruned", "infeasible"]

# -- numbers at the edge ---------------------------------------------------------------
# Every number a client sends is bounded here, so nothing out of range reaches Optuna or
# SQL (an int beyond int64 overflows SQLite's and PostgreSQL's BIGINT; a NaN or Infinity
# cannot be written back as JSON).
INT64_MAX = 2**63 - 1
#: A non-negative integer a database column can hold (offsets, steps, trial numbers).
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
#: JSON has no NaN or Infinity; Python's parser accepts them (and reads 1e309 as Infinity).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _finite_tree(value: Any) -> Any:
    """Refuse NaN/Infinity and integers beyond int64 anywhere inside a free-form value,
    naming where: such a value would be stored and then break every read of it."""
    for path, leaf in _leaves(value, ""):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            raise PydanticCustomError(
                "finite_number", "is not a finite number", {"path": path, "value": leaf}
            )
        if isinstance(leaf, int) and not isinstance(leaf, bool) and not -INT64_MAX - 1 <= leaf <= INT64_MAX:
            raise PydanticCustomError(
                "int64_range", "is beyond the int64 range", {"path": path, "value": leaf}
            )
    return value


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


#: A free-form JSON object whose numbers are all finite and within int64.
JsonObject = Annotated[dict[str, Any], AfterValidator(_finite_tree)]
#: The search space: an object, or YAML/JSON text (parsed and checked by the service).
SpaceInput = Annotated[dict[str, Any] | str, AfterValidator(_finite_tree)]
#: Objective values: a list in objective order, or keyed by objective.
ObjectiveValues = Annotated[list[float] | dict[str, float] | None, AfterValidator(_finite_tree)]
#: Named metrics, each a finite number.
Metrics = Annotated[dict[str, float], AfterValidator(_finite_tree)]


def _as_utc(value: datetime) -> datetime:
    # the tuner_* tables store naive UTC (api.db.models.utcnow); say so on the way out
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _local_as_utc(value: datetime) -> datetime:
    # Optuna stores naive local time (datetime.now()); astimezone reads a naive value as local
    return value.astimezone(UTC)


#: A UTC timestamp from a tuner_* table, always rendered with its offset (RFC 3339).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
#: A timestamp Optuna stored in local time, rendered in UTC with its offset.
OptunaDatetime = Annotated[datetime, AfterValidator(_local_as_utc)]


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
    workload_params: JsonObject = Field(default_factory=dict)
    space: SpaceInput = Field(description="the search space as an object, or as YAML/JSON text")
    objectives: list[str] = Field(default_factory=lambda: ["throughput"], max_length=4)
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = Field(20, ge=1, le=100_000)
    timeout_s: FiniteFloat | None = Field(None, gt=0)
    budget: JsonObject | None = None
    memory_limit_bytes: int | None = Field(None, gt=0, le=INT64_MAX)
    seed: int = Field(0, ge=0, le=SEED_MAX, description="sampler and data seed; Optuna takes 0 to 2**32 - 1")
    baseline: bool = True
    use_generator: bool = True
    workers: int = Field(1, ge=1, le=64)
    device: str = Field("auto", pattern=DEVICE_RE.pattern, description="exactly auto, cpu, cuda or cuda:N")
    run: bool = Field(True, description="run trials on the server; false for ask/tell from your own jobs")
    trial_timeout_s: FiniteFloat | None = Field(
        DEFAULT_TRIAL_TIMEOUT_S,
        gt=0,
        description="ask/tell: a trial with no report, heartbeat or tell for this long expires to FAIL; null: never",
    )
    heartbeat_grace_s: FiniteFloat = Field(
        DEFAULT_HEARTBEAT_GRACE_S,
        ge=MIN_HEARTBEAT_GRACE_S,
        description="server-run studies: a running trial whose process (on any host: a `tuner worker`) sent no "
        "heartbeat for this long is failed as lost and its config runs again",
    )
    executor: str | None = Field(
        None,
        max_length=32,
        description="name of one of the server's executors (`tuner serve --executor`); never an address",
    )
    slo_p99_ms: FiniteFloat | None = Field(None, gt=0, description="kind: inference spaces: the p99 latency SLO (default 50)")
    target_qps: FiniteFloat | None = Field(None, gt=0, description="kind: inference spaces: the fixed rate of objective p99_at_qps")


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
    hparams: dict[str, Any] = Field(default_factory=dict, description="the trial's hyperparameters (the space's hparams:), types kept")
    objective_values: dict[str, float] | None = Field(None, description="values by objective name (val_acc: 0.93)")


class StudyRead(BaseModel):
    name: str
    workload: str
    mode: str
    state: str
    reason: str | None
    objectives: list[str]
    directions: list[str]
    objective_names: list[str] = Field(default_factory=list, description="the objectives' names without directions (val_acc:max -> val_acc)")
    sampler: str | None
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None
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
    datetime_start: OptunaDatetime | None
    datetime_complete: OptunaDatetime | None
    duration_s: float | None


class AskRead(BaseModel):
    study: str
    trial_number: int
    config: dict[str, Any]
    params: dict[str, Any]
    hparams: dict[str, Any] = Field(default_factory=dict, description="the space's hyperparameters (hparams:), types kept")


class ReportCreate(Strict):
    step: Int64
    value: FiniteFloat


class ReportRead(BaseModel):
    prune: bool


class TellCreate(Strict):
    values: ObjectiveValues = Field(
        None, description="objective values, as a list in objective order or keyed by objective"
    )
    status: TellStatus = "ok"
    metrics: Metrics = Field(default_factory=dict)
    telemetry: JsonObject = Field(default_factory=dict)
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
    space: SpaceInput


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
    probed_at: UtcDatetime
    profile: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    # shown to admin tokens only (api.routes.health): anonymous callers get `ready` alone
    database: str | None = None
    schema_revision: str | None = None
    detail: str | None = None


class FieldProblemRead(BaseModel):
    """One problem with one input field: `tuner.errors.FieldProblem` as JSON."""

    field: str = Field(description="where: a body field (dotted path), a query or path parameter, or a header")
    value: Any = Field(None, description="the value sent; a value JSON cannot hold (NaN, Infinity) is shown as a string")
    problem: str
    fix: str
    source: str | None = None


class Problem(BaseModel):
    """Every error answer: RFC 9457 `application/problem+json`, naming the field, the value and the fix."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    retryable: bool = Field(description="whether the same request, unchanged, can succeed later")
    problems: list[FieldProblemRead]
