"""Shared helpers of the service tests: databases (SQLite, PostgreSQL), tokens, live servers."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from api.auth import create_token
from api.db.engine import make_engine, make_session_factory
from api.db.migrate import upgrade
from tests.shared_data import H200_DIR

ROOT = Path(__file__).resolve().parents[1]
GPT_TABLE = H200_DIR / "gpt_124m.jsonl"
PG_ADMIN_URL = os.environ.get("TUNER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TINY_SPACE = {
    "name": "tiny",
    "params": {
        "micro_batch_size": {"type": "int", "low": 1, "high": 64, "log": True},
        "precision": {"type": "categorical", "choices": ["fp32", "bf16"]},
    },
}
REPLAY_SPACE = {
    "name": "replay-gpt",
    "params": {
        "micro_batch_size": {"type": "categorical", "choices": [8, 16, 32, 64, 128, 256]},
        "precision": {"type": "categorical", "choices": ["bf16", "fp16", "tf32", "fp32"]},
        "activation_checkpointing": {"type": "bool"},
    },
}


_MIGRATED: list[Path] = []  # the session's migrated SQLite template (built on first use)


def _migrated_template() -> Path:
    """An empty SQLite database brought to head by the real `upgrade` once per test session.
    Running Alembic and Optuna's schema set-up costs ~0.5 s per database (more under load);
    a copy of its result costs a millisecond. test_migrations runs `upgrade` itself."""
    if not _MIGRATED:
        folder = Path(tempfile.mkdtemp(prefix="tuner-migrated-"))
        atexit.register(shutil.rmtree, folder, True)
        path = folder / "tuner.db"
        upgrade(f"sqlite:///{path}")
        # The file alone must hold everything: close the storage `upgrade` opened and fold
        # the WAL into the database (SQLite removes the -wal file with the last connection).
        from tuner.storage import rdb as tuner_storage

        tuner_storage._opened.pop(f"sqlite:///{path}").engine.dispose()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert not path.with_name("tuner.db-wal").exists(), "the migrated template kept a WAL file"
        _MIGRATED.append(path)
    return _MIGRATED[0]


def sqlite_db(tmp_path: Path) -> str:
    """A fresh SQLite database at head: a copy of the session's migrated template (the same
    file `upgrade` writes), opened as `upgrade` leaves it (Optuna's storage cached)."""
    from tuner.storage.rdb import open_storage

    path = tmp_path / "tuner.db"
    url = f"sqlite:///{path}"
    if path.exists():  # an existing database is upgraded in place, never replaced
        upgrade(url)
        return url
    shutil.copyfile(_migrated_template(), path)
    open_storage(url)  # what `upgrade` does last: the process's storage for this URL is ready
    return url


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def pg_schema_db() -> Iterator[str]:
    """A fresh PostgreSQL schema in db `test`, as a URL whose search_path points at it."""
    import sqlalchemy as sa

    if not pg_reachable():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (db 'test', trust auth); .ci/run starts it")
    schema = f"tuner_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        from tuner.storage import rdb as tuner_storage

        opened = tuner_storage._opened.pop(url, None)
        if opened is not None:
            opened.engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def trial_template(x: float, **user_attrs: object) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with one float param `x`, as the writer receives it from a hot copy."""
    from datetime import datetime

    return optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
        datetime_complete=None, params={"x": x}, distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
        user_attrs={"tuner.kind": "trial", **user_attrs}, system_attrs={}, intermediate_values={}, trial_id=0,
    )


def new_token(url: str, name: str | None = None, *, scopes: set | None = None, owner: str | None = None) -> str:
    """A token (default scopes: read, ask_tell, create; owner: its name)."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            token = create_token(session, name or f"t-{uuid.uuid4().hex[:8]}", scopes, owner)
            session.commit()
            return token
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`tuner serve` as a real subprocess (uvicorn on 127.0.0.1, a free port)."""

    def __init__(self, url: str, *extra: str, grace: float = 1.0) -> None:
        self.storage = url
        self.extra = extra
        self.grace = grace
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        cmd = [
            sys.executable, "-m", "tuner", "serve", "--storage", self.storage, "--port", str(self.port),
            "--heartbeat-grace", str(self.grace), "--replay-table", f"gpt_124m={GPT_TABLE}", *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"tuner serve exited with {self.proc.returncode}:\n{out}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("tuner serve did not answer /health in time")

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash, with no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def drain(server: LiveServer) -> list[bytes]:
    """Read the server's output as it comes: a database outage logs tracebacks, and a full pipe
    would block the server on its next log line. Returns the lines read (for a failure)."""
    lines: list[bytes] = []
    stdout = server.proc.stdout if server.proc is not None else None
    if stdout is not None:
        threading.Thread(target=lambda: lines.extend(iter(stdout.readline, b"")), daemon=True).start()
    return lines
