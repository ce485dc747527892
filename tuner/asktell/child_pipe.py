"""The server's child processes (writer, sampler) and the pipe to each: starting one and
waiting for its hello, stopping it, the child's message loop, and the exceptions it
sends back."""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from typing import Any

#: Seconds a child gets to import and open what it needs before it counts as failed.
START_TIMEOUT_S = 60.0

#: What a child sends once it is ready; ("error", text) instead if it cannot start.
READY = ("ready", None)


class ChildStartError(RuntimeError):
    """The child did not say it was ready; the message says why."""


def start_child(target: Callable[..., None], args: tuple[Any, ...], name: str) -> tuple[Any, Any]:
    """Spawn `target(child_end, *args)` and wait for its READY; (process, parent end).

    Spawned, never forked: the server runs threads. A daemon, so a clean exit of the
    server ends it; when the server is killed, the child reads EOF (`messages`)."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=True)
    child = ctx.Process(target=target, args=(child_end, *args), name=name, daemon=True)
    child.start()
    child_end.close()  # so EOF on our end means the child is gone
    hello: Any = None
    if parent_end.poll(START_TIMEOUT_S):
        with contextlib.suppress(EOFError, OSError):
            hello = parent_end.recv()
    if hello != READY:
        stop_child(child, parent_end)
        if isinstance(hello, tuple) and len(hello) == 2 and hello[0] == "error":
            raise ChildStartError(str(hello[1]))
        raise ChildStartError(f"it did not start within {START_TIMEOUT_S:.0f} s" if hello is None else f"it said {hello!r}")
    return child, parent_end


def stop_child(child: Any, conn: Any) -> None:
    """Ask the child to stop (None), give it 10 s, then kill it; close our end."""
    if conn is not None:
        with contextlib.suppress(OSError, ValueError):  # the child may be gone already
            conn.send(None)
    if child is not None:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
    if conn is not None:
        conn.close()


def messages(conn: Any) -> Iterator[Any]:
    """Each message the parent sends, until it says stop (None) or is gone (EOF): a child
    whose server was killed ends here instead of living on."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        yield message


def picklable_error(exc: Exception) -> Exception:
    """`exc` itself if it survives pickling, else a RuntimeError with its type and text
    (some driver exceptions cannot be rebuilt from their pickled form)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


__all__ = ["READY", "ChildStartError", "messages", "picklable_error", "start_child", "stop_child"]
