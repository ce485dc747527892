"""One rank of a multi-node trial, run inside a process that something else placed (a Ray actor).

The forked-rank path (`run`, `launch`, `supervise`) owns its rank processes; here each
rank's process is given to us, possibly on another machine, so this module offers the
pieces that process needs and nothing that assumes a shared host:

- `open_rendezvous`: rank 0 serves the TCPStore on *its node's* address (never a
  hard-wired 127.0.0.1), so ranks on other nodes can reach it;
- `run_rank`: the same rank body as a forked rank (`rank_main.execute_rank`), with a
  channel that relays rank 0's prune questions through a callable and keeps the result;
- `interface_of`: the network interface carrying an address, so gloo/NCCL talk over
  the interface the cluster uses (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME);
- `combine_rank_results`: every rank's result into the trial's, as for forked ranks.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
from collections.abc import Callable, Sequence

from tuner.trial.distributed.rank_spec import RankChannel, RankSpec
from tuner.trial.setup import Trainable
from tuner.trial_request import TrialRequest
from tuner.types import TrialResult

_SIOCGIFADDR = 0x8915  # Linux: the IPv4 address of an interface


class CallbackChannel(RankChannel):
    """A rank's channel when there is no pipe to a launcher: prune questions go to `ask`."""

    def __init__(self, rank: int, ask: Callable[[int, float], bool] | None) -> None:
        self.rank = rank
        self._ask = ask
        self.steps_done = 0
        self.result: TrialResult | None = None

    def step_done(self, steps_done: int) -> None:
        self.steps_done = steps_done

    def ask_prune(self, steps_done: int, loss: float) -> bool:
        return bool(self._ask(steps_done, loss)) if self._ask is not None else False

    def send_result(self, result: TrialResult) -> None:
        self.result = result


def open_rendezvous(host: str, world_size: int, timeout_s: float) -> object:
    """Rank 0's TCPStore server on `host` (its node's address); keep it until the trial ends."""
    from tuner.trial.distributed.launch import rendezvous_store

    return rendezvous_store(world_size, timeout_s, host=host)


def interface_of(address: str) -> str | None:
    """The name of the interface that carries IPv4 `address` (None if none here does)."""
    for _index, name in socket.if_nameindex():
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    return None


def run_rank(
    rank: int,
    workload: Trainable,
    request: TrialRequest,
    *,
    store_host: str,
    store_port: int,
    device_type: str,
    cpu_threads: int | None,
    comm_env: Sequence[tuple[str, str]],
    timeout_s: float,
    ask_prune: Callable[[int, float], bool] | None,
    owner_pid: int,
    device_index: int | None = 0,
) -> TrialResult:
    """Train rank `rank` of `request` in this process and return its result; never raises."""
    import torch.distributed as dist

    from tuner.trial.distributed.rank_main import execute_rank

    spec = placed_rank_spec(
        workload, request, store_host=store_host, store_port=store_port, device_type=device_type,
        device_index=device_index, cpu_threads=cpu_threads, comm_env=comm_env, timeout_s=timeout_s,
        owner_pid=owner_pid,
    )
    try:
        return execute_rank(rank, spec, CallbackChannel(rank, ask_prune))
    finally:
        if dist.is_initialized():
            # No barrier: a peer may be dead. The process lives on (an actor), so the
            # group must go for the next trial to start its own.
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def placed_rank_spec(
    workload: Trainable,
    request: TrialRequest,
    *,
    store_host: str,
    store_port: int,
    device_type: str,
    device_index: int | None,
    cpu_threads: int | None,
    comm_env: Sequence[tuple[str, str]],
    timeout_s: float,
    owner_pid: int,
) -> RankSpec:
    """What a rank placed elsewhere (a Ray actor) is given: its device (`device_index`: its
    own GPU, 0 where Ray set CUDA_VISIBLE_DEVICES), the rendezvous on rank 0's node, its
    communication environment. Built without torch, so a GPU trial's ranks can be checked
    on a CPU machine."""
    peak = request.peak_flops
    return RankSpec(
        workload=workload,
        request=request,
        device_type=device_type,
        store_port=store_port,
        owner_pid=owner_pid,
        timeout_s=timeout_s,
        cpu_threads=cpu_threads,
        total_peak_flops=peak * request.config.world_size if peak else None,
        store_host=store_host,
        device_index=device_index,
        comm_env=tuple(comm_env),
    )


def combine_rank_results(
    results: Sequence[TrialResult], *, item_unit: str, duration_s: float, notes: Sequence[str]
) -> TrialResult:
    """The trial's result from every rank's (all present, in rank order)."""
    from tuner.trial.distributed.aggregate import combine
    from tuner.trial.distributed.supervise import RankState, Supervision

    states = [RankState(rank=r, result=result) for r, result in enumerate(results)]
    return combine(
        Supervision(states=states),
        item_unit=item_unit,
        world_size=len(results),
        duration_s=duration_s,
        notes=list(notes),
    )
