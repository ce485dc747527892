"""The pipe between the server and its child processes (writer, sampler): the child's
message loop and the exceptions it sends back."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any


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


__all__ = ["messages", "picklable_error"]
