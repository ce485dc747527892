"""The contract every workload implements (built-in or a user's own model).

A workload owns its model, data and loss; the trial runner owns the knobs. Modules that
describe a workload import no torch at module level, so listing workloads stays fast: the
model code lives in a sibling module imported inside `build`.

To add your own model, subclass `TrainableWorkload`, implement `build`, and either call
`tuner.workloads.register_workload(MyWorkload)` (Python API) or expose the class under the
`tuner.workloads` entry-point group of your package (CLI and service pick it up by name).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tuner.errors import FieldProblem, WorkloadError
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialConfig, TrialResult

if TYPE_CHECKING:  # the runner's types; imported lazily because they pull in torch
    from tuner.hardware.profile import HardwareProfile
    from tuner.inference.serving import ServingSetup
    from tuner.trial.setup import TrainingSetup


@dataclass(frozen=True)
class WorkloadParam:
    """One parameter of a workload (layers, d_model, vocab…), not a knob.

    `tunable`: a study may search it under the space's `hparams:` section (each trial's
    params are the study's, overridden by the trial's hparams). `changes_shape`: it
    changes the model's size, so the memory model predicts each trial with the shape its
    hparams give (a tuned d_model still has its OOM predicted before launch).
    """

    name: str
    kind: str  # "int" | "float" | "str" | "bool"
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    tunable: bool = False
    changes_shape: bool = False

    def check(self, value: Any) -> str | None:
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "str":
            if not isinstance(value, str):
                return "must be a string"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number ({self.kind})"
        elif self.kind == "int" and not float(value).is_integer():
            return "must be an integer"
        if self.choices is not None and value not in self.choices:
            return "must be one of " + ", ".join(map(str, self.choices))
        if self.low is not None and value < self.low:
            return f"must be >= {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "help": self.help,
            "low": self.low,
            "high": self.high,
            "choices": list(self.choices) if self.choices is not None else None,
            "tunable": self.tunable,
            "changes_shape": self.changes_shape,
        }


class Workload(ABC):
    """A named training job whose configs can be tuned.

    Contract:
    - `name` is a registry name (lowercase letters, digits, `_`, `-`).
    - `resolve_params` fills defaults and rejects unknown or illegal parameters with a
      `WorkloadError` naming each. It is called once, where raw user input enters (a
      study's spec is resolved when it is created; the CLI's `recommend`/`profile`).
    - Every other method that takes `params` (`default_config`, `shape`, `measured_on`,
      `build`) and `run_trial` (as `request.params`) receives *resolved* params: every
      parameter present, defaults filled, already validated. Do not resolve them again.
    - `run_trial(request, reporter)` trains (or replays) `request.config` within
      `request.budget`, calls `reporter.report(step, loss)` as it goes, and always returns
      a `TrialResult`: an out-of-memory is status `oom`, a pruned trial `pruned`, never an
      exception.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    item_unit: ClassVar[str] = "items"  # what throughput counts: "tokens", "samples"
    params: ClassVar[tuple[WorkloadParam, ...]] = ()
    #: Whether trials train a model whose learning a config can change: then a throughput
    #: study holds the knobs that change what is learned and fails diverging trials
    #: (`tuner.study.quality`). True for every `TrainableWorkload`; a workload that answers
    #: trials its own way (a measured table, a script) sets it when it really trains.
    learns: ClassVar[bool] = False

    def resolve_params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        problems = [
            FieldProblem(
                f"params.{key}",
                value,
                f"is not a parameter of workload {self.name!r}",
                "use one of: " + (", ".join(known) or "(none)"),
            )
            for key, value in given.items()
            if key not in known
        ]
        resolved: dict[str, Any] = {}
        for param in self.params:
            value = given.get(param.name, param.default)
            if param.kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            why = param.check(value)
            if why:
                problems.append(
                    FieldProblem(f"params.{param.name}", value, why, param.help or "see `tuner workloads`")
                )
            resolved[param.name] = value
        if problems:
            raise WorkloadError(problems)
        return resolved

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The untuned config a user would start from; the baseline of every ratio."""
        return TrialConfig()

    def shape(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The workload's shape for the memory model (layers, d, heads, seq, vocab, params…)."""
        return {}

    def measured_on(self, params: Mapping[str, Any]) -> HardwareProfile | None:
        """The machine this workload's numbers come from when it is not the one running the
        study (a replayed table's), so memory predictions and MFU are that machine's.
        None: the trials measure this machine."""
        return None

    def serving(self, params: Mapping[str, Any]) -> ServingSetup:
        """The inference entry point: the model to serve and what a request is (torch
        imported here). Workloads that cannot be served keep this default, which refuses
        an inference study with the reason; see docs/workloads.md."""
        raise WorkloadError(
            FieldProblem(
                "workload",
                self.name,
                "has no inference entry point",
                "serve a workload that implements serving(params) (gpt, recsys, convnet) or add one",
            )
        )

    @property
    def serves(self) -> bool:
        return type(self).serving is not Workload.serving

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "item_unit": self.item_unit,
            "params": [p.to_dict() for p in self.params],
            "serves": self.serves,
        }

    @abstractmethod
    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        """Run one trial of `request.config` and return what it measured.

        `request.peak_flops` is one device's peak FLOP/s for the config's precision (from
        the hardware profile); a workload that measures FLOPs reports `mfu` with it, others
        ignore it. `request.params` are resolved (see the class docstring).
        """


class TrainableWorkload(Workload):
    """A workload that really trains a torch model; the shared runner applies the knobs."""

    learns = True

    @abstractmethod
    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        """Build model, data and loss on `device` for `config` (torch imported here);
        `params` are resolved."""

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        from tuner.trial.runner import run_training_trial

        return run_training_trial(self, request, reporter)
