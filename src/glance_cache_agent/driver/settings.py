"""The settings object a Driver is configured from (never global state)."""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024**3

#: Glance's ``image_cache_max_size`` default (10 GiB).
DEFAULT_MAX_SIZE = 10 * GIB
#: Glance's ``image_cache_stall_time`` default (one day).
DEFAULT_STALL_TIME = 86400.0
#: Glance's ``image_cache_sqlite_db`` default.
DEFAULT_DB_NAME = "cache.db"
#: How long our own connections wait for a lock before giving up. Glance's
#: connections wait 0 s and retry for 2 s; ours may wait longer because every
#: write transaction we open is tiny.
DEFAULT_BUSY_TIMEOUT = 5.0


@dataclass(frozen=True)
class CacheSettings:
    """Everything the driver needs to know about one cache.

    Field names follow Glance's ``image_cache_*`` options without the prefix.
    ``lock_path`` defaults to the cache directory, as oslo.concurrency's
    default does once Glance configured its driver.
    """

    cache_dir: str | os.PathLike[str] | None
    db: str = DEFAULT_DB_NAME
    max_size: int = DEFAULT_MAX_SIZE
    stall_time: float = DEFAULT_STALL_TIME
    lock_path: str | os.PathLike[str] | None = None
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT

    @property
    def effective_lock_path(self) -> str | None:
        """Directory holding oslo lock files: ``lock_path`` or the cache dir."""
        chosen = self.lock_path if self.lock_path is not None else self.cache_dir
        return None if chosen is None else os.path.abspath(os.fspath(chosen))
