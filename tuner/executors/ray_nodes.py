"""Which Ray nodes can hold the ranks of a trial: the fit check per node, and placement.

Whole-cluster totals say nothing about where a rank can go: two nodes with 2 CPUs each
have 4 CPUs but no room for one rank that needs 3, and a trial that needs more than any
single node holds must span nodes or it waits forever. `plan_placement` decides, from
the nodes that are alive now, the placement strategy a trial's placement group uses, or
why it can never be placed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Ray placement strategies for the ranks of one multi-rank trial.
PLACEMENTS: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_SPREAD")
#: tuner's resource names -> Ray's
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


@dataclass(frozen=True)
class NodeInfo:
    """One alive Ray node: its id, its address, and its total resources (Ray's names)."""

    node_id: str
    address: str
    resources: Mapping[str, float]


@dataclass(frozen=True)
class Placement:
    """How a trial's ranks are placed: the strategy, or `refused` saying why it never fits."""

    strategy: str | None
    refused: str | None = None
    note: str | None = None


def alive_nodes() -> list[NodeInfo]:
    """The cluster's alive nodes, as Ray reports them now."""
    import ray

    return [
        NodeInfo(
            node_id=str(n["NodeID"]),
            address=str(n.get("NodeManagerAddress", "?")),
            resources={str(k): float(v) for k, v in (n.get("Resources") or {}).items()},
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def ranks_that_fit(node: NodeInfo, per_rank: Mapping[str, float]) -> int:
    """How many ranks of `per_rank` (tuner's names) this node holds at most."""
    fits = math.inf
    for name, amount in per_rank.items():
        if amount > 0:
            fits = min(fits, node.resources.get(RAY_NAMES.get(name, name), 0.0) // amount)
    return int(fits) if fits != math.inf else 0


def plan_placement(
    per_rank: Mapping[str, float], world_size: int, requested: str, nodes: Sequence[NodeInfo]
) -> Placement:
    """The placement strategy for `world_size` ranks of `per_rank` on `nodes`, or why none fits.

    PACK (the default) keeps a trial on one node when one node holds all its ranks; when
    none does, the trial spans nodes (SPREAD). STRICT_SPREAD needs one node per rank.
    """
    capacity = {n.address or n.node_id: ranks_that_fit(n, per_rank) for n in nodes}
    need = ", ".join(f"{amount:g} {name}" for name, amount in per_rank.items() if amount > 0)
    seen = ", ".join(f"{where}: {fits}" for where, fits in capacity.items()) or "no alive node"
    if requested == "STRICT_SPREAD":
        usable = sum(1 for fits in capacity.values() if fits >= 1)
        if usable < world_size:
            return Placement(
                None,
                refused=f"world_size={world_size} with placement STRICT_SPREAD needs {world_size} nodes that each "
                f"hold one rank ({need}); {usable} do (ranks per node: {seen})",
            )
        return Placement("STRICT_SPREAD")
    largest = max(capacity.values(), default=0)
    total = sum(capacity.values())
    if total < world_size:
        return Placement(
            None,
            refused=f"world_size={world_size} needs {world_size} ranks of {need}; the alive nodes hold "
            f"{total} (ranks per node: {seen})",
        )
    if largest >= world_size:
        return Placement(requested)
    strategy = "SPREAD" if requested == "PACK" else requested
    return Placement(
        strategy,
        note=f"no single node holds {world_size} ranks of {need} (ranks per node: {seen}); the trial spans nodes",
    )
