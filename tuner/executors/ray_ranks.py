"""The ranks of one multi-rank trial as Ray actors in a placement group (multi-node trials).

How a `world_size = N` training trial runs on Ray:

1. `plan_placement` (per node, from the nodes alive now) picks the strategy: PACK keeps
   the ranks on one node when one node holds them, SPREAD spans nodes when none does,
   STRICT_SPREAD when asked; a trial that no set of nodes can hold is refused at once.
2. A placement group of N bundles (one per rank) is reserved; waiting for it is bounded
   and gives up as soon as the alive nodes can no longer hold the trial.
3. One `RankActor` per bundle. Each says where it runs (node id and address, from Ray);
   rank 0 serves the rendezvous TCPStore on its own node's address, never on a
   hard-wired 127.0.0.1, so ranks on other nodes reach it. gloo on CPU, NCCL on GPU, each
   rank told the interface its node's address is on (GLOO_/NCCL_SOCKET_IFNAME) and the
   trial's communication knobs (NCCL_ALGO, NCCL_PROTO), through its environment.
4. The driver waits for every rank. A rank whose actor dies (its node was lost, its
   process killed) or that fails stops the trial: the other ranks are killed (they are
   blocked in a collective with a dead peer) and the result is `failed` with a reason
   that names the rank and its node. The result of a trial records its nodes
   (`telemetry["nodes"]`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tuner.executors.ray_nodes import RAY_NAMES, NodeInfo, alive_nodes, plan_placement
from tuner.trial_request import TrialRequest
from tuner.types import TrialResult, TrialStatus

#: How long a rank may sit in a collective with no progress before gloo/NCCL give up.
RANK_TIMEOUT_S = 600.0
#: After a rank failed or died, how long to wait for Ray to say whether its node is gone
#: (the reason then names the lost node, not just the consequence seen by the peers).
NODE_LOSS_GRACE_S = 30.0
_POLL_S = 0.5
#: Set on a node, Ray leaves CUDA_VISIBLE_DEVICES alone: an actor then sees every GPU of
#: its node and must pick the one Ray assigned it by index.
RAY_NOSET_VISIBLE_DEVICES = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def rank_device(device: str, gpu_ids: Sequence[Any], *, ray_sets_visible_devices: bool) -> tuple[str, int | None]:
    """(device type, CUDA index) a rank placed by Ray trains on, from the study's device
    and the GPU ids Ray assigned the rank's actor; raises ValueError with the fix when
    the two disagree (a CUDA study whose ranks got no GPU would silently train on CPUs
    with gloo).

    With Ray's CUDA_VISIBLE_DEVICES the rank's GPU is its `cuda:0`; without it (RAY_NOSET
    set) every actor of a node sees all the node's GPUs, and `cuda:0` for every rank would
    put them all on one GPU (NCCL refuses: duplicate GPU), so the index is Ray's id.
    """
    if device == "cpu":
        return "cpu", None
    if not gpu_ids:
        if device.startswith("cuda"):
            raise ValueError(
                f"device {device}: this rank got no GPU from Ray; give each rank one "
                "(--gpus-per-rank 1, resources_per_trial gpu: 1) or run the study on device cpu"
            )
        return "cpu", None  # auto, on a rank with no GPU
    first = str(gpu_ids[0])
    if ray_sets_visible_devices or not first.isdigit():
        return "cuda", 0
    return "cuda", int(first)


def gpu_share_problem(per_rank: Mapping[str, float], world_size: int) -> str | None:
    """Why ranks of one trial cannot share GPUs: NCCL needs one whole GPU per rank (two
    ranks on one device fail at the first collective with "Duplicate GPU detected")."""
    gpus = float(per_rank.get("gpu", 0) or 0)
    if world_size > 1 and 0 < gpus < 1:
        return (
            f"gpus_per_rank={gpus:g}: the {world_size} ranks of a trial would share GPUs, which NCCL refuses "
            "(one GPU per rank); fix: --gpus-per-rank 1 (or more), or world_size 1 to share GPUs between trials"
        )
    return None


def rank_environment(comm_env: Mapping[str, str], interface: str | None, node_env: Mapping[str, str]) -> dict[str, str]:
    """The communication environment of one rank: the trial's knobs (NCCL_ALGO, NCCL_PROTO)
    and the interface carrying the node's address for gloo and NCCL, unless the node
    already names one (a cluster's own GLOO_/NCCL_SOCKET_IFNAME wins)."""
    env = dict(comm_env)
    if interface is not None:
        # gloo/NCCL would otherwise pick the interface of the host name, which on a
        # multi-homed node may not be the one the other nodes reach.
        env.setdefault("GLOO_SOCKET_IFNAME", node_env.get("GLOO_SOCKET_IFNAME", interface))
        env.setdefault("NCCL_SOCKET_IFNAME", node_env.get("NCCL_SOCKET_IFNAME", interface))
    return env


class RankActor:
    """One rank's process on a Ray node (public only so Ray can pickle it by reference)."""

    def __init__(self) -> None:
        self._store: object | None = None

    def where(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def open_rendezvous(self, host: str, world_size: int, timeout_s: float) -> int:
        from tuner.trial.distributed.remote import open_rendezvous

        self._store = open_rendezvous(host, world_size, timeout_s)
        return int(self._store.port)  # type: ignore[attr-defined]

    def run(
        self,
        rank: int,
        request_data: dict[str, Any],
        registered: dict[str, type],
        store_host: str,
        store_port: int,
        comm_env: dict[str, str],
        cpu_threads: int | None,
        report: Any,
    ) -> TrialResult:
        import ray

        from tuner.trial.distributed.remote import interface_of, run_rank
        from tuner.workloads import TrainableWorkload, get_workload, register_workload

        try:
            for cls in registered.values():
                register_workload(cls)
            request = TrialRequest.from_dict(request_data)
            workload = get_workload(request.workload)
            if not isinstance(workload, TrainableWorkload):
                return TrialResult.failed(f"workload {request.workload!r} does not train; it has no ranks to run")
            env = rank_environment(comm_env, interface_of(ray.util.get_node_ip_address()), os.environ)
            try:
                device_type, device_index = rank_device(
                    request.device, ray.get_gpu_ids(), ray_sets_visible_devices=not os.environ.get(RAY_NOSET_VISIBLE_DEVICES)
                )
            except ValueError as exc:
                return TrialResult.failed(f"rank {rank}: {exc}")
            result = run_rank(
                rank,
                workload,  # type: ignore[arg-type]
                request,
                store_host=store_host,
                store_port=store_port,
                device_type=device_type,
                device_index=device_index,
                cpu_threads=cpu_threads if device_type == "cpu" else None,
                comm_env=sorted(env.items()),
                timeout_s=RANK_TIMEOUT_S,
                ask_prune=report if rank == 0 else None,
                owner_pid=os.getpid(),
            )
            # what this rank's process really had in its environment for communication
            applied = {name: os.environ.get(name, "") for name in env}
            return dataclasses.replace(result, telemetry={**result.telemetry, "rank_env": applied})
        except Exception as exc:  # a bug in set-up is the rank's failure, not the actor's
            return TrialResult.failed(f"rank {rank} could not start: {type(exc).__name__}: {exc}"[:500])
        finally:
            self._store = None  # rank 0: the rendezvous ends with the trial

    def combine(self, results: list[TrialResult], item_unit: str, duration_s: float, notes: list[str]) -> TrialResult:
        from tuner.trial.distributed.remote import combine_rank_results

        return combine_rank_results(results, item_unit=item_unit, duration_s=duration_s, notes=notes)


def run_ranks_on_ray(
    request: TrialRequest,
    *,
    per_rank: Mapping[str, float],
    placement: str,
    registered: dict[str, type],
    comm_env: Mapping[str, str],
    report: Callable[[int, float], bool] | None,
    placement_timeout_s: float,
    cancelled: Callable[[], bool],
    item_unit: str,
) -> TrialResult:
    """Run the `world_size` ranks of `request` as Ray actors; never raises (see module doc)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    started = time.perf_counter()
    world_size = request.config.world_size
    shared = gpu_share_problem(per_rank, world_size)
    if shared is not None:
        return TrialResult.failed(shared)
    plan = plan_placement(per_rank, world_size, placement, alive_nodes())
    if plan.refused is not None:
        return TrialResult.failed(f"config.world_size: {plan.refused}; fix: lower world_size or add nodes")
    bundle = {RAY_NAMES.get(k, k): v for k, v in per_rank.items() if v > 0}
    group = placement_group([dict(bundle) for _ in range(world_size)], strategy=plan.strategy, name=f"tuner-trial-{request.trial_number}")
    actors: list[Any] = []
    try:
        why_not = _wait_until_placed(group, per_rank, world_size, placement, placement_timeout_s, cancelled)
        if why_not is not None:
            return TrialResult.failed(why_not)
        actor_class = ray.remote(RankActor)
        for rank in range(world_size):
            actors.append(
                actor_class.options(
                    num_cpus=bundle.get("CPU", 0),
                    num_gpus=bundle.get("GPU", 0),
                    resources={k: v for k, v in bundle.items() if k not in ("CPU", "GPU")} or None,
                    max_restarts=0,
                    max_task_retries=0,
                    # a second thread, so `where` answers while `run` trains
                    max_concurrency=2,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
                    name=None,
                ).remote()
            )
        places = ray.get([a.where.remote() for a in actors], timeout=placement_timeout_s)
        nodes = [{"rank": r, "node_ip": p["node_ip"], "node_id": p["node_id"]} for r, p in enumerate(places)]
        for node, place in zip(nodes, places, strict=True):
            if place["gpu_ids"]:
                node["gpu_ids"] = place["gpu_ids"]  # which GPU of its node each rank had
        port = ray.get(actors[0].open_rendezvous.remote(places[0]["node_ip"], world_size, RANK_TIMEOUT_S), timeout=60)
        threads = max(1, int(per_rank.get("cpu", 1) or 1))
        refs = [
            actor.run.remote(
                rank,
                request.to_dict(),
                registered,
                places[0]["node_ip"],
                port,
                dict(comm_env),
                threads if not per_rank.get("gpu") else None,
                report if rank == 0 else None,
            )
            for rank, actor in enumerate(actors)
        ]
        result = _collect(refs, actors, nodes, cancelled, item_unit, started, plan.note)
        return _with_nodes(result, nodes)
    except Exception as exc:  # Ray's own errors while placing: the trial fails, the study goes on
        return TrialResult.failed(f"the trial's ranks could not be started on Ray: {type(exc).__name__}: {str(exc)[:500]}")
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(group)


def _wait_until_placed(
    group: Any,
    per_rank: Mapping[str, float],
    world_size: int,
    placement: str,
    timeout_s: float,
    cancelled: Callable[[], bool],
) -> str | None:
    """None once the group is placed; otherwise why it never will be (bounded wait)."""
    import ray

    ready = group.ready()
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = ray.wait([ready], timeout=2.0)
        if done:
            return None
        if cancelled():
            return "cancelled: the executor was closed before the trial's ranks were placed"
        plan = plan_placement(per_rank, world_size, placement, alive_nodes())
        if plan.refused is not None:
            return f"config.world_size: {plan.refused} (a node left while the trial waited to be placed)"
        if time.monotonic() > deadline:
            return (
                f"the {world_size} ranks were not placed within {timeout_s:g} s: the cluster is busy with "
                "other work; fix: raise placement_timeout_s or run fewer trials at once"
            )


def _collect(
    refs: list[Any],
    actors: list[Any],
    nodes: list[dict[str, Any]],
    cancelled: Callable[[], bool],
    item_unit: str,
    started: float,
    note: str | None,
) -> TrialResult:
    """Wait for every rank; stop at the first failure and say which rank and node it was."""
    import ray

    results: dict[int, TrialResult] = {}
    lost: dict[int, str] = {}  # rank -> Ray's error, for ranks whose actor died
    index = {ref: r for r, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
        for ref in done:
            rank = index[ref]
            try:
                results[rank] = ray.get(ref)
            except Exception as exc:
                lost[rank] = f"{type(exc).__name__}: {_first_line(str(exc))}"
        bad = [r for r, res in results.items() if res.status not in (TrialStatus.OK, TrialStatus.PRUNED)]
        if lost or bad:
            return _failure(actors, pending, results, lost, nodes, index)
        if cancelled():
            return TrialResult.failed("cancelled: the executor was closed while the trial ran")
    ordered = [results[r] for r in range(len(refs))]
    for rank, result in enumerate(ordered):
        nodes[rank]["env"] = result.telemetry.get("rank_env", {})
    notes = [note] if note else []
    try:
        return ray.get(actors[0].combine.remote(ordered, item_unit, time.perf_counter() - started, notes), timeout=60)
    except Exception as exc:
        return TrialResult.failed(f"combining the ranks' results failed: {type(exc).__name__}: {exc}"[:600])


def _failure(
    actors: list[Any],
    pending: list[Any],
    results: dict[int, TrialResult],
    lost: dict[int, str],
    nodes: list[dict[str, Any]],
    index: dict[Any, int],
) -> TrialResult:
    """The reason of a failed multi-rank trial, naming the lost node when Ray knows it."""
    import ray

    trial_nodes = {n["node_id"] for n in nodes}
    if not lost and _peers_answer(actors, [index[ref] for ref in pending]):
        pending = []  # every other rank's process is alive: the failing rank's own error
    deadline = time.monotonic() + NODE_LOSS_GRACE_S
    dead: set[str] = set()
    # A peer's error (a broken connection in a collective) often arrives before Ray has
    # noticed the node that caused it is gone: wait a little for Ray to say so.
    while time.monotonic() < deadline:
        dead = trial_nodes - {n.node_id for n in alive_nodes()}
        if dead:
            break
        if pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
            for ref in done:
                rank = index[ref]
                try:
                    results[rank] = ray.get(ref)
                except Exception as exc:
                    lost[rank] = f"{type(exc).__name__}: {_first_line(str(exc))}"
        elif not lost:
            break  # every rank answered and no actor died: a rank's own failure
        else:
            time.sleep(_POLL_S)
    if dead:
        names = [_node_name(n) for n in nodes if n["node_id"] in dead]
        ranks = [n["rank"] for n in nodes if n["node_id"] in dead]
        unique = ", ".join(dict.fromkeys(names))
        return TrialResult.failed(
            f"node {unique} was lost mid-trial (rank{'s' if len(ranks) > 1 else ''} "
            f"{', '.join(map(str, ranks))} ran there); the trial's other ranks were stopped"
        )
    if lost:
        rank = min(lost)
        return TrialResult.failed(
            f"rank {rank} on node {_node_name(nodes[rank])} died without a result ({lost[rank]}); "
            "the trial's other ranks were stopped"
        )
    rank = min(r for r, res in results.items() if res.status not in (TrialStatus.OK, TrialStatus.PRUNED))
    bad = results[rank]
    status = TrialStatus.OOM if bad.status is TrialStatus.OOM else TrialStatus.FAILED
    return TrialResult(
        status=status,
        reason=f"rank {rank} on node {_node_name(nodes[rank])}: {bad.reason}",
        item_unit=bad.item_unit,
        peak_memory_bytes=bad.peak_memory_bytes,
    )


def _peers_answer(actors: list[Any], ranks: list[int], timeout_s: float = 5.0) -> bool:
    """True when the actors of `ranks` all answer (their processes and nodes are alive)."""
    import ray

    if not ranks:
        return True
    probes = [actors[r].where.remote() for r in ranks]
    ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout_s)
    if len(ready) < len(probes):
        return False
    try:
        ray.get(ready)
    except Exception:
        return False
    return True


def _with_nodes(result: TrialResult, nodes: list[dict[str, Any]]) -> TrialResult:
    return dataclasses.replace(result, telemetry={**result.telemetry, "nodes": nodes})


def _node_name(node: Mapping[str, Any]) -> str:
    return f"{node['node_ip']} ({str(node['node_id'])[:12]})"


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


__all__ = ["NodeInfo", "RankActor", "gpu_share_problem", "rank_device", "rank_environment", "run_ranks_on_ray"]
