"""`RankSpec` (what a rank process is given) and `RankChannel` (its pipe to the launcher).

Their own module so the rank's entry point (`rank_main`) and its training loop
(`rank_loop`) both import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection

from tuner.trial.setup import Trainable
from tuner.trial_request import TrialRequest
from tuner.types import TrialResult


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs; pickled to the rank process (the workload by class)."""

    workload: Trainable
    request: TrialRequest  # config, budget, resolved params and seed of the trial
    device_type: str  # "cpu" | "cuda"; rank r uses cuda:r
    store_port: int
    owner_pid: int
    timeout_s: float
    cpu_threads: int | None
    #: peak FLOP/s of all ranks' devices together (the request's is one device's)
    total_peak_flops: float | None = None
    #: where the rendezvous TCPStore listens: loopback here, rank 0's node on Ray
    store_host: str = "127.0.0.1"
    #: the CUDA device of this rank; None: cuda:rank (one machine, all GPUs visible).
    #: A Ray rank sees only its own GPU, as cuda:0.
    device_index: int | None = None
    #: environment each rank sets before it joins the process group (NCCL_ALGO,
    #: NCCL_PROTO, GLOO_SOCKET_IFNAME...): communication knobs and the interface to use
    comm_env: tuple[tuple[str, str], ...] = ()


def process_group_backend(device_type: str) -> str:
    """The torch.distributed backend of a rank: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device_type == "cuda" else "gloo"


class RankChannel:
    """This rank's end of the pipe to the launching process."""

    def __init__(self, conn: Connection, rank: int) -> None:
        self._conn = conn
        self.rank = rank

    def step_done(self, steps_done: int) -> None:
        self._conn.send(("step", self.rank, steps_done))

    def ask_prune(self, steps_done: int, loss: float) -> bool:
        self._conn.send(("report", steps_done, loss))
        reply = self._conn.recv()
        return bool(reply[1]) if reply and reply[0] == "prune" else False

    def send_result(self, result: TrialResult) -> None:
        self._conn.send(("result", self.rank, result))
