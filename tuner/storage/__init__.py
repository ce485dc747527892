"""Where studies live: storage URLs and Optuna's RDB storage (SQLite or PostgreSQL).

`rdb` opens the storage; `optuna_private` holds every use of a private Optuna name.
"""

from tuner.storage.rdb import (
    DEFAULT_STORAGE_URL,
    StorageUnavailableError,
    display_url,
    open_storage,
    resolve_storage_url,
)

__all__ = ["DEFAULT_STORAGE_URL", "StorageUnavailableError", "display_url", "open_storage", "resolve_storage_url"]
