"""Everything a running service holds: settings, database handles, caches, the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.auth import TokenVerifier
from api.services.hot_state import StudyStateRecheck
from api.settings import Settings
from tuner.asktell.service import AskTellService


class BackgroundRunner(Protocol):
    """Runs server-side studies in the background (api.runtime.study_runner.StudyRunner).
    A Protocol, so the context holds one without importing the runner, which would import
    this module back."""

    def start(self) -> None: ...

    def wake(self) -> None: ...

    def is_active(self, name: str) -> bool: ...

    def request_stop(self, name: str) -> None: ...

    def shutdown(self, timeout: float = 60.0) -> None: ...


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Any  # optuna.storages.RDBStorage on the same database
    tokens: TokenVerifier
    asktell: AskTellService
    runner: BackgroundRunner | None = None
    hardware_cache: dict[str, Any] = field(default_factory=dict)
    #: when each ask/tell study's row was last read (stops on other servers: api.services.hot_state)
    study_states: StudyStateRecheck = field(default_factory=StudyStateRecheck)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()
        self.asktell.close()
        self.engine.dispose()
