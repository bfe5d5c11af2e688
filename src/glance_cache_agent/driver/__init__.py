"""The driver core: Glance's sqlite cache driver, reimplemented.

Import what you need from here; the submodules are an implementation detail.
The driver knows nothing of the agent.
"""

from .errors import (
    BadDriverConfiguration,
    CacheDirectoryError,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    DriverError,
    InvalidImageId,
    SchemaMismatch,
)
from .ids import image_id_problem, is_image_id_syntax, is_uuid, validate_image_id
from .layout import STATES, CacheLayout, EntryKind, FileInfo, looks_like_lock_file
from .openfiles import files_open_for_writing
from .oslo_lock import LockTimeout, external_lock
from .settings import CacheSettings
from .sqlite import BaseScan, CachedRow, Driver, delete_cached_file, fsync_directory

__all__ = [
    "STATES",
    "BadDriverConfiguration",
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
    "FileInfo",
    "InvalidImageId",
    "LockTimeout",
    "SchemaMismatch",
    "delete_cached_file",
    "external_lock",
    "files_open_for_writing",
    "fsync_directory",
    "image_id_problem",
    "is_image_id_syntax",
    "is_uuid",
    "looks_like_lock_file",
    "validate_image_id",
]
