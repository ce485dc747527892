"""`SearchSpace`: which knobs a study tunes, over what values, and when each one applies.

Written as YAML/JSON (schema and examples: docs/search-spaces.md), checked strictly on load
(every problem at once, each naming the field, the value and the fix), then turned into
Optuna suggestions, distributions, grids and `TrialConfig`s. Optuna is imported only inside
the functions that need it, so importing this module stays cheap for the CLI and client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, SearchSpaceError
from tuner.knobs import FREE_ALL, QUALITY_KNOBS
from tuner.space.conditions import Condition, parse_condition
from tuner.space.files import read_document, write_document
from tuner.space.kinds import kind_problems
from tuner.space.params import FixedParam, ParamSpec
from tuner.space.presets import preset_path
from tuner.space.schema import param_from_entry
from tuner.space.validation import (
    dependency_order,
    free_knobs_problems,
    header_problems,
    params_problems,
    prune_conditions,
)
from tuner.types import TrialConfig

__all__ = ["SearchSpace", "load_preset", "load_space"]

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name", "description", "workload", "workload_params", "free_knobs", "params", "hparams", "kind",
)
DEFAULT_GRID_LIMIT = 100_000


def _with_source(problems: list[FieldProblem], source: str | None) -> list[FieldProblem]:
    return [dataclasses.replace(p, source=source) if source and p.source is None else p for p in problems]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with `from_dict`, `load` or `load_space`."""

    name: str
    description: str = ""
    workload: str | None = None
    workload_params: dict[str, Any] = field(default_factory=dict)
    params: tuple[ParamSpec, ...] = ()
    # Knobs of `tuner.knobs.QUALITY_KNOBS` a throughput study may search instead of holding
    # them at the workload's defaults (("all",) frees every one); see docs/search-spaces.md.
    free_knobs: tuple[str, ...] = ()
    # What the trials are: "training" or "inference" (serving knobs, tuner.inference).
    kind: str = "training"
    # Where the space was read from; in error messages only, not part of its identity.
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        if isinstance(self.workload_params, Mapping):
            object.__setattr__(self, "workload_params", dict(self.workload_params))
        if self.free_knobs == FREE_ALL:
            object.__setattr__(self, "free_knobs", (FREE_ALL,))
        problems = header_problems(self.name, self.description, self.workload, self.workload_params)
        problems += free_knobs_problems(self.free_knobs)
        if not problems:
            object.__setattr__(self, "free_knobs", tuple(self.free_knobs))
        problems += params_problems(self.params)
        problems += kind_problems(self.kind, [p.name for p in self.params], self.free_knobs)
        if problems:
            raise SearchSpaceError(_with_source(problems, self.source))

    # -- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> SearchSpace:
        """Build from the file form; raises SearchSpaceError with every problem found."""
        if not isinstance(data, Mapping):
            raise SearchSpaceError(
                FieldProblem(
                    "space",
                    data,
                    "must be a mapping",
                    "write name: ..., params: {...} at the top level",
                    source,
                )
            )
        problems: list[FieldProblem] = []
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                problems.append(
                    FieldProblem(
                        str(key), data[key], "is not a search-space key", "use: " + ", ".join(TOP_LEVEL_KEYS)
                    )
                )
        header = {
            "name": data.get("name"),
            "description": data.get("description", ""),
            "workload": data.get("workload"),
            "workload_params": data.get("workload_params", {}),
        }
        if header["description"] is None:
            header["description"] = ""
        if header["workload_params"] is None:
            header["workload_params"] = {}
        problems += header_problems(**header)
        free_knobs = data.get("free_knobs") or ()
        if free_knobs == FREE_ALL:
            free_knobs = (FREE_ALL,)
        problems += free_knobs_problems(free_knobs)
        entries = data.get("params")
        params: list[ParamSpec] = []
        broken: list[str] = []
        broken_conditions: dict[str, Condition] = {}
        hparam_entries = data.get("hparams")
        if hparam_entries is not None and not isinstance(hparam_entries, Mapping):
            problems.append(
                FieldProblem(
                    "hparams",
                    hparam_entries,
                    "must be a mapping of name -> definition",
                    "write e.g. hparams: {dropout: {type: float, low: 0.0, high: 0.5}}",
                )
            )
            hparam_entries = None
        if entries is None and hparam_entries:
            entries = {}  # a space of the user's own hyperparameters only
        if not isinstance(entries, Mapping):
            problems.append(
                FieldProblem(
                    "params",
                    entries,
                    "is missing" if entries is None else "must be a mapping of knob -> definition",
                    "add params: {micro_batch_size: {type: int, low: 1, high: 64}, ...}",
                )
            )
        else:
            sections = [("params", entries, False), ("hparams", hparam_entries or {}, True)]
            for section, section_entries, hparam in sections:
                for name, entry in section_entries.items():
                    if hparam and name in entries:
                        problems.append(
                            FieldProblem(
                                f"hparams.{name}",
                                name,
                                "is also defined under params",
                                "define each name once: knobs under params, your own hyperparameters under hparams",
                            )
                        )
                        continue
                    try:
                        params.append(param_from_entry(str(name), entry, hparam=hparam))
                    except SearchSpaceError as exc:
                        problems += exc.problems
                        broken.append(str(name))
                        # Still check what its condition refers to, so one pass reports everything.
                        when = entry.get("when") if isinstance(entry, Mapping) else None
                        condition, _ = parse_condition(when, field=f"{section}.{name}.when")
                        if when is not None and condition is not None:
                            broken_conditions[str(name)] = condition
            problems += params_problems(params, broken=broken, broken_conditions=broken_conditions)
        kind = data.get("kind", "training")
        problems += kind_problems(kind, [p.name for p in params], free_knobs)
        if problems:
            raise SearchSpaceError(_with_source(problems, source))
        return cls(params=tuple(params), free_knobs=tuple(free_knobs), kind=kind, source=source, **header)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        return cls.from_dict(read_document(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The file form; `from_dict(to_dict())` gives back an equal space."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        if self.workload is not None:
            data["workload"] = self.workload
        if self.workload_params:
            data["workload_params"] = dict(self.workload_params)
        if self.free_knobs:
            data["free_knobs"] = FREE_ALL if FREE_ALL in self.free_knobs else list(self.free_knobs)
        if self.kind != "training":
            data["kind"] = self.kind
        data["params"] = {p.name: p.to_dict() for p in self.params if not p.hparam}
        if self.hparam_names:
            data["hparams"] = {p.name: p.to_dict() for p in self.params if p.hparam}
        return data

    def save(self, path: str | Path) -> Path:
        """Write as YAML or JSON, chosen by the suffix."""
        path = Path(path)
        write_document(path, self.to_dict())
        return path

    # -- looking things up ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def hparam_names(self) -> list[str]:
        """The user's own hyperparameters (the `hparams:` section), in order."""
        return [p.name for p in self.params if p.hparam]

    @property
    def knob_names(self) -> list[str]:
        """The knobs this space tunes or fixes (the `params:` section)."""
        return [p.name for p in self.params if not p.hparam]

    def hparams_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters of the point `values` (sampled, e.g. an Optuna trial's
        params), types kept, with the fixed ones that apply added (they are never sampled)."""
        out: dict[str, Any] = {}
        for param in self.ordered_params:
            if not param.hparam:
                continue
            if param.name in values:
                out[param.name] = values[param.name]
            elif isinstance(param, FixedParam) and (param.when is None or param.when.holds({**values, **out})):
                out[param.name] = param.value
        return {name: out[name] for name in self.hparam_names if name in out}

    @property
    def freed(self) -> frozenset[str]:
        """The QUALITY_KNOBS this space frees (`free_knobs`, with `all` expanded)."""
        return frozenset(QUALITY_KNOBS) if FREE_ALL in self.free_knobs else frozenset(self.free_knobs)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def get(self, name: str) -> ParamSpec:
        for param in self.params:
            if param.name == name:
                return param
        raise SearchSpaceError(
            FieldProblem(
                "name",
                name,
                f"is not a parameter of search space {self.name!r}",
                "use one of: " + ", ".join(self.names),
                self.source,
            )
        )

    @cached_property
    def ordered_params(self) -> tuple[ParamSpec, ...]:
        """Parameters so that each comes after every parameter its condition reads."""
        return dependency_order(self.params)

    def is_active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether `name` applies given the values of the (active) parameters in `values`."""
        when = self.get(name).when
        return when is None or when.holds(values)

    # -- sampling ---------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask `trial` (an Optuna Trial, FrozenTrial or FixedTrial) for every active parameter.

        Conditions are evaluated in dependency order, so an inactive parameter is never
        suggested and is absent from the result; fixed values are included.
        """
        values: dict[str, Any] = {}
        for param in self.ordered_params:
            if param.when is None or param.when.holds(values):
                values[param.name] = param.suggest(trial)
        return {name: values[name] for name in self.names if name in values}

    def to_optuna_distributions(self) -> dict[str, Any]:
        """Optuna distributions of every sampled parameter (fixed ones are not sampled).

        Conditional parameters are included; use `suggest` to honour the conditions.
        """
        return {p.name: p.distribution() for p in self.params if not isinstance(p, FixedParam)}

    def grid(self, *, limit: int = DEFAULT_GRID_LIMIT) -> list[dict[str, Any]]:
        """Every combination of active parameter values (fixed values included)."""
        continuous = [p for p in self.params if p.finite_values() is None]
        if continuous:
            raise SearchSpaceError(
                [
                    FieldProblem(
                        f"{p.field}.step",
                        None,
                        "is needed for a grid: a float range without step has infinitely many values",
                        f"give {p.name} a step, or make it categorical with the values to try",
                        self.source,
                    )
                    for p in continuous
                ]
            )
        combos: list[dict[str, Any]] = [{}]
        for param in self.ordered_params:
            values = param.finite_values() or ()
            grown: list[dict[str, Any]] = []
            for combo in combos:
                if param.when is not None and not param.when.holds(combo):
                    grown.append(combo)
                else:
                    grown += [{**combo, param.name: v} for v in values]
            if len(grown) > limit:
                raise SearchSpaceError(
                    FieldProblem(
                        "grid",
                        len(grown),
                        f"has more than {limit} points already at {param.name}",
                        "narrow ranges, add steps, or use a sampler instead of a grid",
                        self.source,
                    )
                )
            combos = grown
        return [{n: combo[n] for n in self.names if n in combo} for combo in combos]

    # -- configs ----------------------------------------------------------------------------
    def to_config(self, values: Mapping[str, Any], base: TrialConfig | None = None) -> TrialConfig:
        """`base` with the knobs in `values` set; knobs not in `values` keep base's value.

        The space's hyperparameters in `values` are not knobs and are left out (read them
        with `hparams_of`)."""
        base = base or TrialConfig()
        hparams = set(self.hparam_names)
        knobs = {k: v for k, v in values.items() if k not in hparams}
        return TrialConfig.from_dict({**base.to_dict(), **knobs}, source=self.source or self.name)

    def default_values(self, config: TrialConfig, hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The values `config` gives this space's active parameters (e.g. to enqueue a baseline);
        a hyperparameter takes its value from `hparams` (e.g. the workload's resolved
        params), or is left out when `hparams` has none for it."""
        values: dict[str, Any] = {}
        hparams = hparams or {}
        for param in self.ordered_params:
            if param.hparam and not isinstance(param, FixedParam) and param.name not in hparams:
                continue
            if param.when is None or param.when.holds(values):
                values[param.name] = (
                    param.value
                    if isinstance(param, FixedParam)
                    else hparams[param.name]
                    if param.hparam
                    else getattr(config, param.name)
                )
        return {name: values[name] for name in self.names if name in values}

    def check_values(self, values: Mapping[str, Any]) -> None:
        """Raise SearchSpaceError unless `values` is exactly one point of this space."""
        problems: list[FieldProblem] = []
        expected: dict[str, Any] = {}
        for param in self.ordered_params:
            if param.when is None or param.when.holds(values):
                expected[param.name] = param
        for name, value in values.items():
            if name not in self:
                problems.append(FieldProblem(name, value, "is not a parameter of this space", "remove it"))
            elif name not in expected:
                when = self.get(name).when
                problems.append(
                    FieldProblem(
                        name, value, f"is inactive here ({when.text() if when else ''} is false)", "remove it"
                    )
                )
            elif not expected[name].contains(value):
                problems.append(
                    FieldProblem(name, value, "is outside the space", f"use {expected[name].domain_text()}")
                )
        for name, param in expected.items():
            if name not in values:
                problems.append(FieldProblem(name, None, "is missing", f"give {param.domain_text()}"))
        if problems:
            raise SearchSpaceError(_with_source(problems, self.source))

    # -- transformations (each returns a new, valid space) ---------------------------------------
    def _replaced(self, params: list[ParamSpec]) -> SearchSpace:
        return dataclasses.replace(self, params=prune_conditions(params))

    def restrict(
        self,
        name: str,
        *,
        low: float | None = None,
        high: float | None = None,
        choices: list[Any] | tuple[Any, ...] | None = None,
    ) -> SearchSpace:
        """A copy where `name` only takes values in [low, high] and among `choices`.

        A numeric range with `choices` becomes a categorical of those choices. Parameters
        whose conditions can no longer hold are dropped. Raises when nothing is left.
        """
        param = self.get(name)
        narrowed = param.narrowed(low, high, None if choices is None else list(choices))
        if narrowed is None:
            asked = {k: v for k, v in (("low", low), ("high", high), ("choices", choices)) if v is not None}
            raise SearchSpaceError(
                FieldProblem(
                    param.field,
                    asked,
                    f"restricting leaves no value: {name} is {param.domain_text()}",
                    "widen the restriction, or remove the knob with without(name) / fix it with with_fixed(name, value)",
                    self.source,
                )
            )
        return self._replaced([narrowed if p.name == name else p for p in self.params])

    def without(self, name: str) -> SearchSpace:
        """A copy without `name`; parameters that depended on it go too (they could never apply)."""
        self.get(name)
        return self._replaced([p for p in self.params if p.name != name])

    def with_fixed(self, name: str, value: Any) -> SearchSpace:
        """A copy where knob `name` is fixed to `value` (added if the space lacks it)."""
        when = self.get(name).when if name in self else None
        fixed = FixedParam(name, value, when=when, hparam=name in self.hparam_names)
        if name in self:
            return self._replaced([fixed if p.name == name else p for p in self.params])
        return self._replaced([*self.params, fixed])


def load_space(space: SearchSpace | Mapping[str, Any] | str | Path) -> SearchSpace:
    """A space from an object, a dict, a .yaml/.yml/.json path, or a preset name (`gpt_tiny_system`).

    A bare name (no directory part) that is not a file here is looked up in search_spaces/,
    with or without its suffix. Paths are read from disk: services taking names from
    untrusted input use `load_preset`, which only reads search_spaces/.
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return SearchSpace.from_dict(space)
    path = Path(space)
    bare = isinstance(space, str) and "/" not in space and "\\" not in space
    if bare and (path.suffix == "" or not path.exists()):
        try:
            path = preset_path(space)
        except SearchSpaceError:
            if path.suffix == "":
                raise
            # a file name with a suffix: report the missing file (the error lists the presets)
    return SearchSpace.load(path)


def load_preset(name: str) -> SearchSpace:
    """Preset `name` from search_spaces/; never reads any other path, so a service may pass
    names from untrusted input."""
    return SearchSpace.load(preset_path(name))
