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
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from .crashpoints import crash_point
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

#: Receives how long, in seconds, each read statement run through
#: ``Database.fetch_all`` took from ``execute`` to the end of ``fetchall``: an
#: upper bound of how long it held SQLite's shared lock (a wait for the lock
#: is included), which blocks every writer's COMMIT.
ReadObserver = Callable[[float], None]


class Database:
    """Opens short-lived connections to one SQLite file."""

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        observer: TxnObserver | None = None,
        read_observer: ReadObserver | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.observer = observer
        self.read_observer = read_observer

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

    def fetch_all(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one read statement to its end and return its raw tuples.

        In autocommit mode SQLite holds the shared lock, which makes every
        writer's COMMIT fail or wait (Glance's fail at once), for as long as a
        statement is active: stepping it to the end here releases the lock
        before the caller builds any object from the tuples. Convert after
        this returns, never while iterating a cursor.
        """
        started = time.perf_counter()
        try:
            rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
        finally:
            if self.read_observer is not None:
                self.read_observer(time.perf_counter() - started)
        return rows

    @contextlib.contextmanager
    def write(self, conn: sqlite3.Connection, commit: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the body inside ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        Keep the body to SQL statements and cheap metadata calls: no image
        data is read or written while this lock is held. ``commit=False``
        ends a body that succeeded with ``ROLLBACK`` (a probe, see
        ``check_writable``).
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
            if commit:
                crash_point("db:commit")  # test-only crash points; off unless armed
            conn.execute("COMMIT" if commit else "ROLLBACK")
            if commit:
                crash_point("db:committed")
        finally:
            if self.observer is not None:
                self.observer(time.perf_counter() - started)

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """Shorthand: a fresh connection with one write transaction."""
        with self.connect() as conn, self.write(conn):
            yield conn

    def check_writable(self) -> None:
        """Raise DatabaseReadOnly (or DatabaseLocked) unless a write would succeed now.

        ``BEGIN IMMEDIATE`` is no proof: when the file cannot be opened for
        writing SQLite silently opens it read-only, and the lock still
        succeeds. A statement that writes nothing (an ``UPDATE`` matching no
        row) does fail on a read-only file, but not when only the directory
        is read-only, because no journal is needed. Rewriting
        ``user_version`` with its own value dirties a page, so SQLite must
        open the journal too; ``ROLLBACK`` then leaves the file's bytes as
        they were. It fails with "attempt to write a readonly database" in
        both cases (measured on SQLite 3.40: tests/test_readonly_database.py).
        """
        with self.connect() as conn, self.write(conn, commit=False):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")

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


__all__ = [
    "EXPECTED_COLUMNS",
    "SCHEMA",
    "Database",
    "DatabaseError",
    "ReadObserver",
    "TxnObserver",
]
