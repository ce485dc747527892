"""`StudySpec`: everything that defines a tuning study, as plain validated data.

Shared by the CLI, the Python API, the REST service and the study loop, so a study means
the same thing wherever it was created. Stored with the study (Optuna study user attr
`tuner.spec`) so a study can be resumed by name alone.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.names import STUDY_NAME_RE
from tuner.study.objectives import canonical_objectives, objective_direction, objective_name
from tuner.types import TrialBudget

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

#: objective name -> optimisation direction
OBJECTIVES: dict[str, str] = {"throughput": "maximize", "val_loss": "minimize"}
# Quality objectives measured after a budget of items or seconds (tuner.study.quality_budget).
OBJECTIVES.update(
    {"quality_at_budget": "minimize", "time_to_target": "minimize", "auc": "maximize", "perplexity": "minimize"}
)
# inference studies (a kind: inference space; tuner.inference.objectives)
OBJECTIVES.update({"qps_at_slo": "maximize", "p99_at_qps": "minimize"})
SAMPLERS: tuple[str, ...] = ("tpe", "random", "gp", "cmaes", "nsga2", "grid")
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
#: The devices a study may name, exactly: anything else (a shell fragment after "cuda:0", a
#: typo) would pass creation and then fail every trial, so it is refused up front.
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]{1,4})$")
#: Optuna's samplers (numpy's RandomState underneath) take seeds in [0, 2**32 - 1]; a seed
#: outside it would be stored and then fail every ask of the study.
SEED_MAX = 2**32 - 1
#: An hour without a sign of life: long enough for an eval pass between reports, short
#: enough that a crashed job's trials do not stay "running" for the rest of the study.
DEFAULT_TRIAL_TIMEOUT_S = 3600.0
#: Seconds a running trial of a study-loop study (`tuner tune`, `tuner worker`) may go
#: without a heartbeat before any other process of the study fails it as lost (its host
#: died or was cut off) and runs its config again. Its process beats every grace / 6 s
#: (`tuner.study.recovery.heartbeat_interval_s`), so a few missed beats are tolerated.
DEFAULT_HEARTBEAT_GRACE_S = 30.0
#: Below this, a busy machine's pauses would fail live trials as lost.
MIN_HEARTBEAT_GRACE_S = 2.0
#: What a study may call its executor (the same rule as tuner.executors.choice's names).
EXECUTOR_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# Optuna study user-attribute keys under which tuner keeps its data. Written in one place
# so the CLI, the service and the dashboard read the same keys.


@dataclass(frozen=True)
class StudySpec:
    name: str
    workload: str
    space: SearchSpace
    workload_params: dict[str, Any] = field(default_factory=dict)
    objectives: tuple[str, ...] = ("throughput",)
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = 20
    timeout_s: float | None = None
    budget: TrialBudget = field(default_factory=TrialBudget)
    memory_limit_bytes: int | None = None  # trials predicted or measured above it are rejected
    seed: int = 0
    baseline: bool = True  # measure the workload's default config first, for an honest ratio
    use_generator: bool = True  # narrow the space with the hardware profile + memory model
    workers: int = 1
    device: str = "auto"
    #: ask/tell: seconds a trial may go without an ask, report, heartbeat or tell before it
    #: expires to FAIL (tuner.asktell.expiry); None: never
    trial_timeout_s: float | None = DEFAULT_TRIAL_TIMEOUT_S
    #: the name of the executor a server runs the study's trials on: one of those the
    #: server was started with (`tuner serve --executor`); never an address or code
    executor: str = "local"
    #: study loop: seconds without a heartbeat after which a running trial's process (on
    #: any host) counts as lost and its trial is failed by a live process of the study
    heartbeat_grace_s: float = DEFAULT_HEARTBEAT_GRACE_S
    slo_p99_ms: float | None = None  # inference: p99 latency SLO (default 50 ms)
    target_qps: float | None = None  # inference: the fixed rate of objective p99_at_qps

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        problems: list[FieldProblem] = []
        # Built-in names or "NAME:max"/"NAME:min" (tuner.study.objectives), kept canonical.
        canonical, objective_problems = canonical_objectives(self.objectives, OBJECTIVES)
        if not objective_problems:
            object.__setattr__(self, "objectives", canonical)
        if not isinstance(self.name, str) or not STUDY_NAME_RE.match(self.name):
            problems.append(
                FieldProblem(
                    "name",
                    self.name,
                    "is not a valid study name",
                    "use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit",
                )
            )
        if not self.objectives:
            problems.append(FieldProblem("objectives", [], "is empty", "use throughput, val_loss or both"))
        problems += objective_problems
        if self.sampler not in SAMPLERS:
            problems.append(
                FieldProblem(
                    "sampler", self.sampler, "is not a sampler", "use one of: " + ", ".join(SAMPLERS)
                )
            )
        if self.pruner not in PRUNERS:
            problems.append(
                FieldProblem("pruner", self.pruner, "is not a pruner", "use one of: " + ", ".join(PRUNERS))
            )
        if self.n_trials is None and self.timeout_s is None:
            problems.append(
                FieldProblem(
                    "n_trials", None, "and timeout_s are both unset", "give n_trials, timeout_s or both"
                )
            )
        if self.n_trials is not None and (
            isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1
        ):
            problems.append(
                FieldProblem("n_trials", self.n_trials, "must be an integer >= 1", "e.g. n_trials: 20")
            )
        if self.timeout_s is not None and not (
            isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0
        ):
            problems.append(
                FieldProblem("timeout_s", self.timeout_s, "must be > 0 seconds", "e.g. timeout_s: 600")
            )
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            problems.append(
                FieldProblem(
                    "memory_limit_bytes", self.memory_limit_bytes, "must be > 0", "omit it or give bytes"
                )
            )
        if not isinstance(self.workers, int) or self.workers < 1:
            problems.append(
                FieldProblem("workers", self.workers, "must be an integer >= 1", "e.g. workers: 1")
            )
        if not isinstance(self.device, str) or not DEVICE_RE.fullmatch(self.device):
            problems.append(
                FieldProblem(
                    "device", self.device, "is not a device", "use exactly auto, cpu, cuda or cuda:N (N a GPU index)"
                )
            )
        if not isinstance(self.executor, str) or not EXECUTOR_NAME_RE.fullmatch(self.executor):
            problems.append(
                FieldProblem("executor", self.executor, "is not an executor name", "use e.g. local or ray")
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            problems.append(
                FieldProblem(
                    "seed", self.seed, f"is not an integer in [0, {SEED_MAX}]", f"use a seed from 0 to 2**32 - 1 = {SEED_MAX}"
                )
            )
        if self.trial_timeout_s is not None and (
            isinstance(self.trial_timeout_s, bool)
            or not isinstance(self.trial_timeout_s, (int, float))
            or not 0 < self.trial_timeout_s < float("inf")
        ):
            problems.append(
                FieldProblem(
                    "trial_timeout_s", self.trial_timeout_s, "must be > 0 seconds (or null: never expire)",
                    "e.g. trial_timeout_s: 3600, and report at least that often",
                )
            )
        if (
            isinstance(self.heartbeat_grace_s, bool)
            or not isinstance(self.heartbeat_grace_s, (int, float))
            or not MIN_HEARTBEAT_GRACE_S <= self.heartbeat_grace_s < float("inf")
        ):
            problems.append(
                FieldProblem(
                    "heartbeat_grace_s", self.heartbeat_grace_s, f"must be >= {MIN_HEARTBEAT_GRACE_S:g} seconds",
                    f"e.g. heartbeat_grace_s: {DEFAULT_HEARTBEAT_GRACE_S:g} (the default)",
                )
            )
        if isinstance(self.budget, TrialBudget):
            from tuner.study.quality_budget import budget_problems

            problems.extend(budget_problems(self.objectives, self.budget))
        from tuner.study.inference_spec import inference_spec_problems

        problems += inference_spec_problems(self.space, self.objectives, self.slo_p99_ms, self.target_qps)
        if problems:
            raise ValidationError(problems)

    @property
    def directions(self) -> list[str]:
        return [objective_direction(o, OBJECTIVES) for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        """The objectives' names without directions (`val_acc:max` -> `val_acc`): metric
        names of the Optuna study, keys of told values, axis labels."""
        return [objective_name(o) for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["space"] = self.space.to_dict()
        data["budget"] = self.budget.to_dict()
        data["objectives"] = list(self.objectives)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        from tuner.space.search_space import SearchSpace

        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValidationError(
                [
                    FieldProblem(
                        k, data[k], "is not a study field", "use one of: " + ", ".join(sorted(known))
                    )
                    for k in unknown
                ]
            )
        if isinstance(data.get("space"), dict):
            data["space"] = SearchSpace.from_dict(data["space"], source="study.space")
        if isinstance(data.get("budget"), dict):
            data["budget"] = TrialBudget.from_dict(data["budget"])
        return cls(**data)
