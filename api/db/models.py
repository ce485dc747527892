"""The service's own tables, all prefixed `tuner_` so they never collide with Optuna's.

Optuna's RDBStorage owns `studies`, `trials`, ... and `alembic_version` in the same
database; our migrations (alembic/, version table `tuner_alembic_version`) touch only
the tables declared here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import DateTime, Enum, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_PREFIX = "tuner_"

# Deterministic constraint names, so migrations can drop or alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StudyState(StrEnum):
    """Lifecycle of a study as the service sees it (stored as its value, e.g. 'queued')."""

    QUEUED = "queued"  # created, waiting for a free runner slot
    RUNNING = "running"  # the background loop is running trials
    STOPPING = "stopping"
    STOPPED = "stopped"  # stopped by a user; resume continues it
    COMPLETED = "completed"
    FAILED = "failed"
    ASK_TELL = "ask_tell"  # trials are asked for and told by clients, never run here
    EXTERNAL = "external"  # created outside the service (CLI) in the same database


#: every study state, in lifecycle order
STUDY_STATES: tuple[StudyState, ...] = tuple(StudyState)
#: states the runner picks up again after a server restart
RESUMABLE_ON_RESTART: tuple[StudyState, ...] = (StudyState.QUEUED, StudyState.RUNNING)


class StudyMode(StrEnum):
    """How a study's trials run."""

    RUN = "run"  # the service's background runner runs them
    ASK_TELL = "ask_tell"  # clients ask for and tell them over REST
    CLI = "cli"  # `tuner tune` / `tuner worker` run them; the service only shows the study


def _stored_enum(enum: type[StrEnum], name: str) -> Enum:
    """`enum` stored as its values in a VARCHAR(16) with a CHECK constraint (ck_<table>_<name>).

    Not a native PostgreSQL ENUM: adding a state is then a new CHECK, not an ALTER TYPE, and
    SQLite and PostgreSQL store the same thing. Values (not member names) are stored, so
    rows written before revision 0003 read back unchanged.
    """
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class StudyRow(Base):
    __tablename__ = "tuner_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    workload: Mapped[str] = mapped_column(String(64), index=True)
    # revision 0003: enums (CHECK constraints ck_tuner_studies_mode / ck_tuner_studies_state)
    mode: Mapped[StudyMode] = mapped_column(_stored_enum(StudyMode, "mode"))
    state: Mapped[StudyState] = mapped_column(_stored_enum(StudyState, "state"), index=True)
    # revision 0004: no spec here; its one stored copy is Optuna's study user attr tuner.spec
    # (api.repositories.studies.spec_of reads it)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # revision 0002: which runner process owns the running study
    runner_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tuner_runners.id", ondelete="SET NULL"), default=None, index=True
    )


class ApiTokenRow(Base):
    __tablename__ = "tuner_api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # sha256 of the token; the token itself is shown once and never stored
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    # revision 0005: who owns the studies this token creates (default: the token's name),
    # and its scopes, space-separated (api.access.Scope; old tokens: "ask_tell create read")
    owner: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[str] = mapped_column(String(128))


class RunnerRow(Base):
    """One server process that runs studies; its heartbeat tells whether it is alive."""

    __tablename__ = "tuner_runners"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)


class HardwareProfileRow(Base):
    """A probe of a machine the service or a worker runs on."""

    __tablename__ = "tuner_hardware_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    profile_json: Mapped[str] = mapped_column(Text)
    probed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
