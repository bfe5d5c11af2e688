"""The driver core: Glance's cache driver, reimplemented.

``CacheDriver`` (``base.py``) is Glance's driver API over the cache's files
(``files.py``) and one ``MetadataStore`` (``store.py``); ``Driver``
(``sqlite.py``) is Glance's sqlite driver, whose store is ``cache.db``
(``sqlite_store.py``). Import what you need from here; the submodules are an
implementation detail. The driver knows nothing of the agent.

The centralized_db driver (``centralized.py``: ``open_centralized_driver``)
is not re-exported: it imports SQLAlchemy, which commands on a sqlite cache
must not pay for. Import it from ``driver.centralized`` where it is needed.
"""

from .base import CacheDriver
from .errors import (
    BadDriverConfiguration,
    BadRowValue,
    CacheDirectoryError,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    DatabaseUnavailable,
    DriverError,
    GlanceSchemaMismatch,
    InvalidImageId,
    NodeNotRegistered,
    SchemaMismatch,
    UnsafeLockFile,
    UnsupportedDatabase,
)
from .files import BaseScan, CacheFiles, delete_cached_file, fsync_directory
from .ids import image_id_problem, is_uuid, validate_image_id
from .layout import STATES, CacheLayout, EntryKind, FileInfo
from .openfiles import FileIdentity, WriterScan, scan_writers
from .oslo_lock import LockTimeout, external_lock
from .settings import CacheSettings
from .sqlite import Driver
from .store import CachedRow, MetadataStore

__all__ = [
    "STATES",
    "BadDriverConfiguration",
    "BadRowValue",
    "BaseScan",
    "CacheDirectoryError",
    "CacheDriver",
    "CacheFiles",
    "CacheLayout",
    "CacheSettings",
    "CachedRow",
    "DatabaseCorrupt",
    "DatabaseError",
    "DatabaseLocked",
    "DatabaseMissing",
    "DatabaseReadOnly",
    "DatabaseUnavailable",
    "Driver",
    "DriverError",
    "EntryKind",
    "FileIdentity",
    "FileInfo",
    "InvalidImageId",
    "LockTimeout",
    "MetadataStore",
    "NodeNotRegistered",
    "GlanceSchemaMismatch",
    "SchemaMismatch",
    "UnsafeLockFile",
    "UnsupportedDatabase",
    "WriterScan",
    "delete_cached_file",
    "external_lock",
    "fsync_directory",
    "image_id_problem",
    "is_uuid",
    "scan_writers",
    "validate_image_id",
]
