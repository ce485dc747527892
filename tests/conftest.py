"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._api_support import pg_schema_db


@pytest.fixture(params=["sqlite", "postgres"])
def rdb_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind: a SQLite file, then a schema of the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'w.db'}"
    else:
        with pg_schema_db() as url:
            yield url
