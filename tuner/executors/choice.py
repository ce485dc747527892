"""`ExecutorChoice`: where a study's trials run, as plain data, and the executor it makes.

The CLI (`tuner tune/worker --executor ray --ray-address ADDR`) and the server
(`tuner serve --executor ray --ray-address ADDR`) describe an executor with one of these;
`make_executor` builds it. A REST study never carries one: it may only name one of the
choices its server was started with (`ExecutorChoice.name`), so no payload can point a
server at an address or at code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.executors.ray_nodes import PLACEMENTS

if TYPE_CHECKING:
    from tuner.executors.base import Executor

EXECUTOR_KINDS: tuple[str, ...] = ("local", "ray")
#: The name a REST study may give: the kind by default ("local", "ray"), or NAME of
#: `--executor NAME=ray` when a server offers several.
EXECUTOR_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class ExecutorChoice:
    """One executor a study may run on.

    Attributes:
        kind: "local" (worker processes on this machine) or "ray".
        name: what a study calls it (defaults to `kind`).
        ray_address: the cluster to join ("auto", "host:port", "ray://host:10001");
            None starts a private single-node Ray instance on 127.0.0.1.
        cpus_per_rank, gpus_per_rank: Ray resources of one rank of a trial.
        placement: PACK (default: the ranks of a trial on as few nodes as fit), SPREAD or
            STRICT_SPREAD (each rank on its own node).
    """

    kind: str = "local"
    name: str = ""
    ray_address: str | None = None
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    placement: str = "PACK"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        problems = []
        if self.kind not in EXECUTOR_KINDS:
            problems.append(FieldProblem("executor", self.kind, "is not an executor", "use local or ray"))
        if not EXECUTOR_NAME_RE.fullmatch(self.name):
            problems.append(
                FieldProblem("executor", self.name, "is not an executor name", "use 1-32 of a-z, 0-9, '_', '-'")
            )
        if self.kind != "ray" and self.ray_address is not None:
            problems.append(
                FieldProblem("--ray-address", self.ray_address, "needs the ray executor", "add --executor ray")
            )
        for field, value in (("--cpus-per-rank", self.cpus_per_rank), ("--gpus-per-rank", self.gpus_per_rank)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(FieldProblem(field, value, "must be a number >= 0", "e.g. 1"))
        if self.placement not in PLACEMENTS:
            problems.append(
                FieldProblem("--placement", self.placement, "is not a placement", "use PACK, SPREAD or STRICT_SPREAD")
            )
        if problems:
            raise ValidationError(problems)

    def describe(self) -> dict[str, Any]:
        """What a client may see of it (`GET /api/v1/executors`): never the address."""
        return {"name": self.name, "kind": self.kind}


def make_executor(
    choice: ExecutorChoice,
    *,
    workers: int | None,
    device: str,
    trial_timeout_s: float | None = None,
    preload_workloads: tuple[str, ...] = (),
) -> Executor:
    """The executor `choice` describes.

    `workers`: trials in flight at once; None: 1 locally, what the cluster fits on Ray.
    """
    if choice.kind == "ray":
        from tuner.executors.ray_executor import RayExecutor

        return RayExecutor(
            address=choice.ray_address,
            resources_per_trial={"cpu": choice.cpus_per_rank, "gpu": choice.gpus_per_rank},
            max_concurrency=workers,
            placement=choice.placement,
        )
    from tuner.executors.local import LocalExecutor

    return LocalExecutor(
        workers=workers or 1, device=device, trial_timeout_s=trial_timeout_s, preload_workloads=preload_workloads
    )


def parse_executor_option(text: str, ray_address: str | None) -> ExecutorChoice:
    """`--executor KIND` or `--executor NAME=KIND` (a server offering several)."""
    name, sep, kind = text.partition("=")
    if not sep:
        name, kind = "", text
    return ExecutorChoice(
        kind=kind.strip(), name=name.strip(), ray_address=ray_address if kind.strip() == "ray" else None
    )
