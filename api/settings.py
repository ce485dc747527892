"""One validated settings object for the whole service.

Read once (environment variables prefixed `TUNER_`, or constructor arguments from
`tuner serve`), never from scattered `os.environ` look-ups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_storage_url(url: str) -> str:
    """Accept the URLs users type and return the one SQLAlchemy and Optuna both load.

    `postgresql://` would pick psycopg2, which is not installed; psycopg 3 is.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNER_", extra="forbid")

    storage: str = Field("sqlite:///tuner.db", description="SQLAlchemy URL of the shared database")
    read_requires_token: bool = Field(False, description="require a bearer token for GET too")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest accepted request body")
    max_page_size: int = Field(200, ge=1, le=10_000)
    default_page_size: int = Field(50, ge=1)
    max_running_studies: int = Field(1, ge=1, description="studies run in the background at once")
    executor_workers: int = Field(1, ge=1, description="local worker processes per running study")
    run_studies: bool = Field(True, description="run studies created through REST in the background")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_grace_s: float = Field(10.0, gt=0, description="a runner silent this long is dead")
    #: how often each server expires ask/tell trials past their study's trial_timeout_s
    #: (api.runtime.asktell_expiry); an expiry lands at most this long after the timeout
    trial_sweep_interval_s: float = Field(15.0, gt=0, description="seconds between sweeps for expired ask/tell trials")
    #: the bound on revocation for the servers that did not revoke (docs/api.md "Tokens")
    token_cache_s: float = Field(
        5.0, ge=0, le=60, description="how long a verified token is trusted before the database is read again"
    )
    #: replay tables the REST API may name: name -> server-side JSONL file. A payload can
    #: only ever pick one of these names; it never supplies a path.
    replay_tables: dict[str, Path] = Field(default_factory=dict)
    #: PostgreSQL only (TUNER_PG_SYNCHRONOUS_COMMIT=on|off): "off" lets the ask/tell writer's
    #: commits return before the WAL flush: lower latency, but a PostgreSQL server crash
    #: may lose the last few hundred ms of answered asks/tells. A tuner crash loses nothing.
    pg_synchronous_commit: bool = Field(True, description="writer commits wait for the WAL flush (on/off)")
    opentelemetry: bool = Field(
        False, description="FastAPI's OpenTelemetry spans/metrics/logs (needs a configured OpenTelemetry provider)"
    )
    sampler_process: bool = Field(
        True, description="sample ask/tell studies' TPE/GP/CMA-ES/NSGA-II asks in a child process (false: in the server)"
    )
    writer_process: bool = Field(
        True, description="commit ask/tell trials from a child process (false: from a thread of the server)"
    )
    #: the executors studies may run on: name -> ExecutorChoice fields (kind, ray_address,
    #: cpus_per_rank, gpus_per_rank, placement). A REST study names one; the first is the
    #: default. Set by `tuner serve --executor ray --ray-address ADDR`.
    executors: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"local": {"kind": "local"}})

    @field_validator("executors")
    @classmethod
    def _executors_are_choices(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from tuner.errors import ValidationError
        from tuner.executors.choice import ExecutorChoice

        if not value:
            raise ValueError("executors is empty; offer at least one, e.g. {'local': {'kind': 'local'}}")
        for name, fields in value.items():
            try:
                ExecutorChoice(**{**fields, "name": name})
            except (ValidationError, TypeError) as exc:
                raise ValueError(f"executors.{name}: {exc}") from None
        return value

    def executor_choices(self) -> dict[str, Any]:
        """name -> ExecutorChoice, in the order given (the first is the default)."""
        from tuner.executors.choice import ExecutorChoice

        return {name: ExecutorChoice(**{**fields, "name": name}) for name, fields in self.executors.items()}

    @field_validator("pg_synchronous_commit", mode="before")
    @classmethod
    def _on_or_off(cls, value: object) -> bool:
        from tuner.asktell.trial_writer import pg_synchronous_commit

        return pg_synchronous_commit(value if isinstance(value, bool) else str(value))

    @field_validator("storage")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = normalize_storage_url(value)
        if not (value.startswith("sqlite:///") or value.startswith("postgresql+psycopg://")):
            raise ValueError(
                f"storage={value!r} is not supported; use sqlite:///PATH or postgresql://USER@HOST/DB"
            )
        return value

    @field_validator("replay_tables")
    @classmethod
    def _tables_exist(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name, path in value.items():
            if not Path(path).is_file():
                raise ValueError(f"replay_tables.{name}={str(path)!r} is not a file; give an existing JSONL table")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.storage.startswith("sqlite")
