"""The sqlite cache driver: Glance's driver API over ``cache.db``.

Follows ``glance.image_cache.drivers.sqlite.Driver``: the files of the cache
(``CacheFiles``) plus rows in the ``cached_images`` table of a SQLite file in
the cache directory (``SqliteStore``). What only this driver has lives here:
creating the database, checking its integrity, and the ``Database`` handle
benchmarks and tests hook into.
"""

from __future__ import annotations

import os

from .base import CacheDriver
from .db import Database, TxnObserver
from .files import layout_of
from .oslo_lock import external_lock
from .settings import CacheSettings
from .sqlite_store import SqliteStore


class Driver(CacheDriver):
    """Cache driver for Glance's ``sqlite`` layout (``cache.db`` + state dirs)."""

    store: SqliteStore

    def __init__(self, settings: CacheSettings, txn_observer: TxnObserver | None = None) -> None:
        db_path = layout_of(settings).db_path
        self.db = Database(db_path, settings.busy_timeout, txn_observer)
        self.db_path = db_path
        super().__init__(settings, SqliteStore(self.db))

    def configure(self) -> None:
        """Create the state directories and the database, like Glance does."""
        self.set_paths()
        self.initialize_db()

    def initialize_db(self) -> None:
        """Create ``cached_images`` if needed; the only method that creates the db.

        Runs under Glance's ``image_cache_db_init`` lock and inside our busy
        timeout (Glance's ``executescript`` has zero lock tolerance). Existing
        rows and the journal mode are left as they are.
        """
        os.makedirs(self.lock_dir, exist_ok=True)
        with external_lock(
            self.lock_dir, "image_cache_db_init", timeout=self.settings.busy_timeout
        ):
            self.store.create_schema()

    def check_database(self) -> list[str]:
        """Verify schema and run ``PRAGMA quick_check``; return problems found."""
        self.store.check_schema()
        return self.store.quick_check()


__all__ = ["Driver"]
