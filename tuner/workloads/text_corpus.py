"""Real text that exists offline on every machine: the Python standard library's source.

The gpt workload trains a byte-level language model on it. Source code is a real,
structured corpus (the loss falls well below the uniform ln(256) within a few steps),
needs no download, and is the same on every machine with the same Python version.

No torch at module level: `corpus_tensor` imports it when called.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: How many bytes of source to read; ~3 MB is plenty for short trials and loads in ms.
CORPUS_BYTES = 3 * 1024 * 1024
#: Share of the corpus held out (its end) for the validation loss.
VALIDATION_SHARE = 0.1


def stdlib_directory() -> Path:
    """The directory of the standard library's `os` module (e.g. /usr/lib/python3.11)."""
    return Path(os.__file__).resolve().parent


@lru_cache(maxsize=1)
def corpus_bytes(limit: int = CORPUS_BYTES) -> bytes:
    """The first `limit` bytes of the standard library's top-level .py files, sorted by name.

    A fixed, sorted file list makes the corpus deterministic for a Python installation.
    """
    chunks: list[bytes] = []
    size = 0
    for path in sorted(stdlib_directory().glob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:  # an unreadable file is skipped; the rest is still a fine corpus
            continue
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    text = b"".join(chunks)[:limit]
    if len(text) < 64 * 1024:
        raise RuntimeError(
            f"the Python standard library at {stdlib_directory()} has only {len(text)} bytes of .py source; "
            "the gpt workload needs at least 64 KiB of text"
        )
    return text


def split_point(total: int) -> int:
    """Index where the validation split (the last `VALIDATION_SHARE`) begins."""
    return int(total * (1.0 - VALIDATION_SHARE))


_TENSOR_CACHE: dict[str, torch.Tensor] = {}


def corpus_tensor(device: str = "cpu") -> torch.Tensor:
    """The corpus as a uint8 tensor on `device`, cached per device in this process."""
    import torch

    key = str(torch.device(device))
    cached = _TENSOR_CACHE.get(key)
    if cached is None:
        if "cpu" not in _TENSOR_CACHE:
            _TENSOR_CACHE["cpu"] = torch.frombuffer(bytearray(corpus_bytes()), dtype=torch.uint8)
        cached = _TENSOR_CACHE["cpu"].to(key)
        _TENSOR_CACHE[key] = cached
    return cached
