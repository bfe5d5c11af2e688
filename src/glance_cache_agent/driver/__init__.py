"""The driver core: Glance's sqlite cache driver, reimplemented.

Import what you need from here; the submodules are an implementation detail.
The driver knows nothing of the agent.
"""

from .errors import (
    BadDriverConfiguration,
    BadRowValue,
    CacheDirectoryError,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    DriverError,
    InvalidImageId,
    SchemaMismatch,
    UnsafeLockFile,
)
from .ids import image_id_problem, is_uuid, validate_image_id
from .layout import STATES, CacheLayout, EntryKind, FileInfo
from .openfiles import FileIdentity, WriterScan, scan_writers
from .oslo_lock import LockTimeout, external_lock
from .settings import CacheSettings
from .sqlite import BaseScan, CachedRow, Driver, delete_cached_file, fsync_directory

__all__ = [
    "STATES",
    "BadDriverConfiguration",
    "BadRowValue",
    "BaseScan",
    "CacheDirectoryError",
    "CacheLayout",
    "CacheSettings",
    "CachedRow",
    "DatabaseCorrupt",
    "DatabaseError",
    "DatabaseLocked",
    "DatabaseMissing",
    "DatabaseReadOnly",
    "Driver",
    "DriverError",
    "EntryKind",
    "FileIdentity",
    "FileInfo",
    "InvalidImageId",
    "LockTimeout",
    "SchemaMismatch",
    "UnsafeLockFile",
    "WriterScan",
    "delete_cached_file",
    "external_lock",
    "fsync_directory",
    "image_id_problem",
    "is_uuid",
    "scan_writers",
    "validate_image_id",
]
