"""Typed errors raised by the driver.

Glance's driver swallows ``sqlite3.DatabaseError`` and carries on with ``None``
results; ours never does. Every database problem surfaces as one of these, so
callers can tell a busy database (retry later) from a missing or corrupt one
(operator action needed) without parsing SQLite's message strings.
"""

from __future__ import annotations

import sqlite3


class DriverError(Exception):
    """Base class of every error the driver raises on purpose."""


class BadDriverConfiguration(DriverError):
    """The settings cannot describe a usable cache (e.g. no cache directory)."""


class InvalidImageId(DriverError, ValueError):
    """An image id that is not a safe, single path component."""

    def __init__(self, image_id: object, reason: str) -> None:
        shown = repr(image_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid image id {shown}: {reason}")
        self.image_id = image_id
        self.reason = reason


class CacheDirectoryError(DriverError):
    """The cache directory is missing, not a directory, or unusable."""


class UnsafeLockFile(DriverError):
    """A lock file (or its directory) is a symlink, not a regular file, or not ours.

    Refused rather than opened: following a link planted by the cache
    directory's owner would let that user have a root-run agent create,
    lock or empty any file on the host.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"refusing lock file {path}: {reason}")
        self.path = path
        self.reason = reason


class DatabaseError(DriverError):
    """A problem with the metadata database; ``path`` names ``cache.db``, or
    Glance's database URL with its password hidden (centralized_db)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.detail = message


class DatabaseMissing(DatabaseError):
    """``cache.db`` does not exist; only ``initialize_db`` creates it."""


class DatabaseCorrupt(DatabaseError):
    """SQLite says the file is not a database, or its image is malformed."""


class DatabaseLocked(DatabaseError):
    """Another connection held the lock longer than our busy timeout."""


class DatabaseReadOnly(DatabaseError):
    """The database (or its directory) cannot be written."""


class BadRowValue(DatabaseError):
    """A ``cached_images`` row holds a value of the wrong type (``hits = 'many'``).

    SQLite stores whatever it is given; Glance never writes such a value, so
    a hand-edited or damaged row is named (image id and column) rather than
    left to fail later as a ``TypeError`` far from its cause.
    """

    def __init__(self, path: str, image_id: str, column: str, value: object) -> None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        super().__init__(
            path,
            f"row {image_id!r} of cached_images: column {column} holds {shown},"
            f" not a finite number; fix or delete that row",
        )
        self.image_id = image_id
        self.column = column
        self.value = value


class SchemaMismatch(DatabaseError):
    """The file is a database, but ``cached_images`` is missing or different."""


class GlanceSchemaMismatch(SchemaMismatch):
    """Glance's main database lacks the centralized cache's tables or columns.

    Unlike a damaged ``cache.db`` (a failed run), this means the configured
    database is not the one Glance's ``db sync`` built: a configuration error.
    """


class DatabaseUnavailable(DatabaseError):
    """Glance's database server cannot be reached or refuses the login.

    A runtime failure, not a configuration error: the next scheduled run
    tries again. ``path`` is the database URL with its password hidden.
    """


class NodeNotRegistered(DatabaseError):
    """No ``node_reference`` row has this node's URL, so no row is this node's.

    glance-api registers its ``worker_self_reference_url`` when it starts;
    the agent never creates that row, since a wrong URL would then silently
    maintain an empty set of rows beside the real ones.
    """

    def __init__(self, path: str, node_url: str, message: str) -> None:
        super().__init__(path, message)
        self.node_url = node_url


class UnsupportedDatabase(BadDriverConfiguration):
    """The database URL names no supported server (PostgreSQL, MySQL/MariaDB,
    SQLite for tests) or its DB-API driver is not installed."""


def translate(path: str, exc: sqlite3.Error) -> DatabaseError:
    """Map a raw ``sqlite3`` exception to the typed error that explains it."""
    message = str(exc)
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        return DatabaseLocked(path, f"database is locked (busy timeout exceeded): {message}")
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return DatabaseCorrupt(path, f"database is corrupt: {message}")
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseReadOnly(path, f"database is read-only: {message}")
    if "no such table" in lowered or "no such column" in lowered:
        return SchemaMismatch(path, f"not a Glance cache database: {message}")
    if "unable to open" in lowered:
        return DatabaseMissing(path, f"cannot open database: {message}")
    return DatabaseError(path, message)
