"""Registry of workloads, addressed by name only.

Names resolve to classes from three places, in order: workloads registered in this
process (`register_workload`), the built-ins, and installed packages' `tuner.workloads`
entry points. A name is never treated as an import path, so a REST payload cannot make
the service import arbitrary code.
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache

from tuner.errors import FieldProblem, WorkloadError
from tuner.trial_request import NullReporter, Reporter, TrialRequest
from tuner.workloads.base import TrainableWorkload, Workload, WorkloadParam

__all__ = [
    "NullReporter",
    "Reporter",
    "TrainableWorkload",
    "TrialRequest",
    "Workload",
    "WorkloadParam",
    "get_workload",
    "list_workload_names",
    "register_workload",
    "registered_workloads",
]

ENTRY_POINT_GROUP = "tuner.workloads"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# name -> "module:Class"; fixed strings written here, never taken from input.
_BUILTINS: dict[str, str] = {
    "gpt": "tuner.workloads.gpt:GPTWorkload",
    "recsys": "tuner.workloads.recsys:RecsysWorkload",
    "replay": "tuner.workloads.replay:ReplayWorkload",
    "convnet": "tuner.workloads.convnet:ConvNetWorkload",
}
_REGISTERED: dict[str, type[Workload]] = {}


def register_workload(cls: type[Workload]) -> type[Workload]:
    """Make `cls` available by `cls.name` in this process (usable as a decorator)."""
    if not _NAME_RE.match(getattr(cls, "name", "") or ""):
        raise WorkloadError(
            FieldProblem(
                "name",
                getattr(cls, "name", None),
                "is not a valid workload name",
                "use lowercase letters, digits, '_' or '-', starting with a letter",
            )
        )
    _REGISTERED[cls.name] = cls
    return cls


def registered_workloads() -> dict[str, type[Workload]]:
    """Workloads registered by Python code in this process (executors re-register them in
    their worker processes, which do not run the user's registration code)."""
    return dict(_REGISTERED)


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_workload_names() -> list[str]:
    return sorted(set(_BUILTINS) | set(_REGISTERED) | set(_entry_points()))


def get_workload(name: str) -> Workload:
    """Return a fresh instance of the workload registered as `name`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise WorkloadError(
            FieldProblem(
                "workload",
                name,
                "is not a registered workload name (module and file paths are never imported)",
                "use one of: " + ", ".join(list_workload_names()),
            )
        )
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name in _BUILTINS:
        module_name, class_name = _BUILTINS[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)()
    entry = _entry_points().get(name)
    if entry is not None:
        return entry.load()()  # type: ignore[attr-defined]
    raise WorkloadError(
        FieldProblem(
            "workload",
            name,
            "is not a registered workload",
            "use one of: " + ", ".join(list_workload_names()),
        )
    )
