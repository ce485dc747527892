"""Everything a running service holds: settings, database handles, caches, the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.auth import TokenVerifier
from api.services.asktell import AskTellService
from api.settings import Settings

if TYPE_CHECKING:
    from api.runtime.study_runner import StudyRunner


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Any  # optuna.storages.RDBStorage on the same database
    tokens: TokenVerifier
    asktell: AskTellService
    runner: StudyRunner | None = None
    hardware_cache: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()
        self.asktell.close()
        self.engine.dispose()
