"""Starting and killing the rank processes of one multi-process trial.

- Ranks are forked from a `forkserver` that has already imported torch and the rank
  code, so a trial's processes start in milliseconds instead of paying `import torch`
  (seconds) each time. The server never touches CUDA, so forked ranks initialise CUDA
  cleanly; it is started once per owning process and exits with it.
- The rendezvous is a `TCPStore` served by the launching process on 127.0.0.1 (a
  multi-node trial on Ray: rank 0's node address) and a port the OS picks (port 0): the port stays bound for the whole trial, so concurrent and consecutive
  trials can never pick the same one (a probed-then-released port could be taken in
  between).
- Each rank puts itself in its own process group and asks the kernel to SIGKILL it when
  its parent (the forkserver, which exits with the launching process) dies; `kill_ranks`
  kills each group, so helpers a rank started die with it and nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import torch.distributed as dist

#: Modules the forkserver imports once, so forked ranks have them already. DDP's
#: constructor imports torch._dynamo (seconds of CPU), hence its place here.
FORKSERVER_PRELOAD = ("torch._dynamo", "tuner.trial.distributed.rank_main")

_context_lock = threading.Lock()
_context: BaseContext | None = None


def rank_context() -> BaseContext:
    """The multiprocessing context ranks start from (a preloaded forkserver on Linux)."""
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                # Only takes effect if no forkserver was started yet in this process;
                # otherwise ranks simply import torch themselves (slower, still correct).
                ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
                _context = ctx
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


def rendezvous_store(world_size: int, timeout_s: float, host: str = "127.0.0.1") -> dist.TCPStore:
    """A TCPStore server listening on `host` only, on an OS-chosen free port (see `.port`).

    TCPStore's own server listens on every interface; the socket is bound here and handed
    over (`master_listen_fd`, which then owns it), so the rendezvous is reachable on
    loopback for a one-machine trial and on the rank-0 node's address for a multi-node one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    return dist.TCPStore(
        host,
        port,
        world_size + 1,  # the ranks plus this server-holding process
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=listener.detach(),
    )


class RankProcesses:
    """The processes of one trial, one per rank, each with a duplex pipe to this process."""

    def __init__(self) -> None:
        self.processes: list[BaseProcess] = []
        self.connections: list[Connection] = []

    def start(
        self, target: Callable[..., None], args_for_rank: Callable[[int, Connection], Sequence[Any]], n: int
    ) -> None:
        ctx = rank_context()
        for rank in range(n):
            ours, theirs = ctx.Pipe(duplex=True)
            process = ctx.Process(
                target=target,
                args=tuple(args_for_rank(rank, theirs)),
                name=f"tuner-rank-{rank}",
                daemon=False,  # ranks may start helpers (compile workers); daemons may not
            )
            process.start()
            theirs.close()  # the child holds its own copy; EOF on ours now means it died
            self.processes.append(process)
            self.connections.append(ours)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def kill_all(self, grace_s: float = 0.0) -> None:
        """Kill every rank (and its process group) that is still running, then reap them."""
        if grace_s > 0:
            for process in self.processes:
                process.join(grace_s)
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                kill_process_tree(process.pid)
        for process in self.processes:
            process.join(5.0)
            if process.pid is not None:
                # Sweep helpers a rank left in its group even when it exited by itself.
                # While any member lives the group id cannot be reused by another process.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        for conn in self.connections:
            conn.close()


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid` and, when it leads its own process group, everything in that group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def detach_and_die_with_parent(owner_pid: int) -> None:
    """Called first thing in a rank: own process group, and no outliving the trial's owner."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _set_parent_death_signal()
    # PR_SET_PDEATHSIG follows the forkserver; also watch the process that launched the
    # trial, in case it dies while the server lives on (e.g. it was spawned, not forked).
    threading.Thread(target=_watch_owner, args=(owner_pid,), daemon=True, name="tuner-owner-watch").start()


def _set_parent_death_signal() -> None:
    if os.uname().sysname != "Linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _watch_owner(owner_pid: int) -> None:
    import time

    while True:
        time.sleep(0.5)
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass
