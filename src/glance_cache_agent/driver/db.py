"""Connections to ``cache.db`` that behave well next to a live glance-api.

Glance's connections use ``timeout=0`` and retry for 2 s on "locked", so any
lock we hold for long makes Glance fail. The rules enforced here:

* a real busy timeout, so *we* wait instead of failing;
* explicit ``BEGIN IMMEDIATE`` for every write, so a read never has to be
  upgraded to a write (SQLite refuses that upgrade at once, timeout or not);
* the journal mode is never touched (Glance counts and deletes WAL side files);
* the file is opened with ``mode=rw``: a missing database is an error, never
  silently created (only ``Driver.initialize_db`` creates it);
* every ``sqlite3`` error leaves as a typed ``DatabaseError``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

from .errors import DatabaseError, DatabaseMissing, SchemaMismatch, translate

#: Glance's DDL, byte for byte in meaning (drivers/sqlite.py ``initialize_db``).
SCHEMA = """CREATE TABLE IF NOT EXISTS cached_images (
    image_id TEXT PRIMARY KEY,
    last_accessed REAL DEFAULT 0.0,
    last_modified REAL DEFAULT 0.0,
    size INTEGER DEFAULT 0,
    hits INTEGER DEFAULT 0,
    checksum TEXT
)"""

EXPECTED_COLUMNS = ("image_id", "last_accessed", "last_modified", "size", "hits", "checksum")

#: Receives how long, in seconds, each write transaction held the write lock
#: (from BEGIN IMMEDIATE to COMMIT or ROLLBACK); benchmarks and metrics hook in here.
TxnObserver = Callable[[float], None]


class Database:
    """Opens short-lived connections to one SQLite file."""

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        observer: TxnObserver | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.observer = observer

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    @contextlib.contextmanager
    def connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        """Yield a connection in autocommit mode; close it afterwards.

        Each call opens its own connection (0.1 ms), like Glance: nothing is
        shared between threads and a replaced database file is picked up.
        """
        if not create and not os.path.exists(self.path):
            raise DatabaseMissing(
                self.path,
                "database does not exist: glance-api creates it when its image cache is"
                " enabled with the sqlite driver (image_cache_driver = sqlite)",
            )
        mode = "rwc" if create else "rw"
        uri = f"file:{quote(self.path)}?mode={mode}"
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA temp_store = MEMORY")
            yield conn
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """Run the body inside ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        Keep the body to SQL statements and cheap metadata calls: no image
        data is read or written while this lock is held.
        """
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()  # lock hold time, not the wait for it
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
        finally:
            if self.observer is not None:
                self.observer(time.perf_counter() - started)

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """Shorthand: a fresh connection with one write transaction."""
        with self.connect() as conn, self.write(conn):
            yield conn

    def check_schema(self, conn: sqlite3.Connection) -> None:
        """Raise SchemaMismatch unless ``cached_images`` has Glance's columns."""
        columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(cached_images)"))
        if not columns:
            raise SchemaMismatch(self.path, "table 'cached_images' does not exist")
        missing = [c for c in EXPECTED_COLUMNS if c not in columns]
        if missing:
            raise SchemaMismatch(
                self.path, f"table 'cached_images' lacks column(s) {', '.join(missing)}"
            )

    def quick_check(self) -> list[str]:
        """Run ``PRAGMA quick_check``; return its problems (empty when ok)."""
        with self.connect() as conn:
            try:
                rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
            except sqlite3.DatabaseError as exc:
                raise translate(self.path, exc) from exc
        return [] if rows == ["ok"] else rows


__all__ = ["EXPECTED_COLUMNS", "SCHEMA", "Database", "DatabaseError", "TxnObserver"]
