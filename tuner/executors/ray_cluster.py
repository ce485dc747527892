"""Start or join a Ray cluster for `RayExecutor` (and the Ray Tune benchmark peer).

Two cases, kept apart on purpose:

- `address=None`: start a private Ray instance owned by this process, bound to 127.0.0.1,
  without dashboard or usage reporting. `address="local"` makes Ray start a *new* instance
  even when another one runs on the machine (plain `ray.init()` would silently join it),
  and `ray.shutdown()` later ends exactly the processes started here.
- an address (`"auto"`, `"host:port"`, `"ray://host:10001"`): join an existing cluster that
  somebody else owns; we never shut it down.

Ray is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayConnection:
    """What `connect_ray` did, so the caller knows whether to shut Ray down again."""

    started_here: bool  # True: a private instance this process must shut down
    joined_existing_session: bool  # True: Ray was already initialised in this process
    address: str  # the GCS address workers and other drivers can use


def connect_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    log_to_driver: bool = False,
) -> RayConnection:
    """Connect this process to Ray: start a private loopback instance or join `address`.

    If Ray is already initialised in this process (a test fixture, a user's own
    `ray.init`), that session is reused as it is and nothing is started.
    """
    import ray

    if ray.is_initialized():
        return RayConnection(started_here=False, joined_existing_session=True, address=_gcs_address(ray))
    # Ray reads these at start-up; set only when the user did not choose otherwise.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "log_to_driver": log_to_driver,
        "configure_logging": False,
        "ignore_reinit_error": False,
    }
    if address is None:
        # Same machine, same files: workers import what this process can, as a spawned
        # local worker would (Ray itself only adds the script's directory and the cwd).
        kwargs["runtime_env"] = _with_driver_import_path(runtime_env)
        _init_private_loopback_instance(
            ray,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=object_store_memory,
            **kwargs,
        )
        return RayConnection(started_here=True, joined_existing_session=False, address=_gcs_address(ray))
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    # A loopback address is a single-node cluster on this machine (`ray start --head
    # --node-ip-address=127.0.0.1`, another process's private instance). Ray on Linux
    # rewrites 127.0.0.1 to the machine's routable address before connecting and then
    # waits forever for a GCS that does not listen there; its single-node mode keeps it.
    with _single_node_mode() if _is_loopback(address) else contextlib.nullcontext():
        ray.init(address=address, **kwargs)
    return RayConnection(started_here=False, joined_existing_session=False, address=_gcs_address(ray))


def disconnect_ray(connection: RayConnection) -> None:
    """Undo `connect_ray`: shut down what it started or joined, never a session it reused."""
    import ray

    if connection.joined_existing_session or not ray.is_initialized():
        return
    ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """Total resources of the connected cluster (CPU, GPU, memory…)."""
    import ray

    return {str(k): float(v) for k, v in ray.cluster_resources().items()}


def _with_driver_import_path(runtime_env: Mapping[str, Any] | None) -> dict[str, Any]:
    """`runtime_env` plus PYTHONPATH = this process's own code directories.

    Only directories outside the interpreter's installation (the project, a script's
    folder, pytest's test directory…): the workers run the same interpreter and already
    see its site-packages. A PYTHONPATH the caller set in `runtime_env` wins.
    """
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    if "PYTHONPATH" not in env_vars:
        installed = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
        own: list[str] = []
        for entry in sys.path:
            path = os.path.realpath(entry or os.getcwd())
            if os.path.isdir(path) and not path.startswith(installed) and path not in own:
                own.append(path)
        inherited = os.environ.get("PYTHONPATH")
        if inherited:
            own.append(inherited)
        if own:
            env_vars["PYTHONPATH"] = os.pathsep.join(own)
    if env_vars:
        env["env_vars"] = env_vars
    return env


def _init_private_loopback_instance(ray: Any, **kwargs: Any) -> None:
    """`ray.init` a new single-node instance whose every server listens on 127.0.0.1 only.

    On Linux Ray replaces `--node-ip-address=127.0.0.1` by the machine's routable address
    and binds its gRPC servers there, i.e. reachable from the network. Ray's single-node
    switch (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the mode Ray uses on laptops) keeps
    the node address on loopback. It is read when Ray is imported, so it is set both in
    the environment (inherited by the GCS, raylet and workers started here) and on the
    already-imported constant, and both are restored afterwards: joining a real
    multi-node cluster later in this process must still work.
    """
    with _single_node_mode():
        ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, **kwargs)
    address = _gcs_address(ray)
    if not address.startswith(LOOPBACK + ":"):
        ray.shutdown()
        raise RuntimeError(
            f"the private Ray instance came up on {address}, not on {LOOPBACK}; refusing to run "
            "trials on a cluster reachable from the network (this Ray version ignores the "
            f"{_SINGLE_NODE_ENV} switch): start one yourself bound to loopback and pass its address"
        )


@contextlib.contextmanager
def _single_node_mode() -> Iterator[None]:
    """Ray's single-node switch, on while Ray starts or connects, restored afterwards."""
    from ray._private import ray_constants

    saved_env = os.environ.get(_SINGLE_NODE_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_NODE_ENV, None)
        else:
            os.environ[_SINGLE_NODE_ENV] = saved_env


def _is_loopback(address: str) -> bool:
    """`127.x.x.x:port`, `localhost:port`, `[::1]:port` (not "auto" nor `ray://`)."""
    if address.startswith("ray://") or ":" not in address:
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _gcs_address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # Ray Client sessions have no GCS address on the driver side
        return "unknown"
