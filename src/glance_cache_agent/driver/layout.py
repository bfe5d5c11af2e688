"""Where things live in a Glance cache directory, and what each entry is.

Glance treats every regular file in the base directory (except the database
path) as a cached image; that sweeps in lock files, SQLite's journal and any
stray file an operator dropped there. We classify each entry instead, and only
entries classified as images (named by a UUID, the only ids Glance issues)
are ever adopted, evicted or deleted; any other name is foreign: counted and
reported, never touched.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from .ids import is_uuid

#: The three state subdirectories Glance creates under the base directory.
STATES = ("incomplete", "invalid", "queue")

#: Lock files oslo.concurrency creates in ``lock_path`` (by default the base
#: directory) for Glance's cache, plus the xattr driver's probe file.
GLANCE_RESERVED_NAMES = frozenset(
    {
        "image_cache_db_init",
        "glance-cache",
        "glance-cache-clean",
        "glance-cache-prune",
        "sqlite_centralized_migrate",
        "checkme",
    }
)

#: Suffixes SQLite appends to the database path for its side files.
SQLITE_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")


class EntryKind(enum.Enum):
    """What an entry of the base directory is."""

    IMAGE = "image"
    DATABASE = "database"
    DB_SIDE_FILE = "db_side_file"
    LOCK_FILE = "lock_file"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One regular file seen by a scan (``lstat``: symlinks are never followed)."""

    name: str
    path: str
    size: int
    mtime: float
    atime: float
    ctime: float
    inode: int
    device: int

    @classmethod
    def from_stat(cls, name: str, path: str, st: os.stat_result) -> FileInfo:
        return cls(
            name=name,
            path=path,
            size=st.st_size,
            mtime=st.st_mtime,
            atime=st.st_atime,
            ctime=st.st_ctime,
            inode=st.st_ino,
            device=st.st_dev,
        )

    def same_file(self, st: os.stat_result) -> bool:
        """True when ``st`` describes the very file this scan saw, unchanged."""
        return (
            st.st_ino == self.inode
            and st.st_dev == self.device
            and st.st_size == self.size
            and st.st_mtime == self.mtime
        )


@dataclass(frozen=True)
class CacheLayout:
    """Paths of one cache directory and the rules that classify its entries."""

    base_dir: str
    db_path: str
    #: names with a fixed meaning in the base directory (db, side files, locks)
    special_names: dict[str, EntryKind] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        special = {name: EntryKind.LOCK_FILE for name in GLANCE_RESERVED_NAMES}
        if os.path.dirname(self.db_path) == self.base_dir:
            db_name = os.path.basename(self.db_path)
            special[db_name] = EntryKind.DATABASE
            for suffix in SQLITE_SIDE_SUFFIXES:
                special[db_name + suffix] = EntryKind.DB_SIDE_FILE
        object.__setattr__(self, "special_names", special)

    @classmethod
    def create(cls, base_dir: str | os.PathLike[str], db_name: str = "cache.db") -> CacheLayout:
        base = os.path.abspath(os.fspath(base_dir))
        # os.path.join: an absolute db name replaces the base, as in Glance.
        return cls(base_dir=base, db_path=os.path.normpath(os.path.join(base, db_name)))

    @property
    def reserved_names(self) -> frozenset[str]:
        """Names in the base directory that can never be image ids."""
        return frozenset(self.special_names)

    def state_dir(self, state: str) -> str:
        if state not in STATES:
            raise ValueError(f"unknown cache state {state!r}")
        return os.path.join(self.base_dir, state)

    def image_path(self, image_id: str, state: str = "active") -> str:
        """Path of ``image_id`` in ``state`` (``active`` is the base directory).

        The id must already be validated: this only joins.
        """
        if state == "active":
            return os.path.join(self.base_dir, image_id)
        return os.path.join(self.state_dir(state), image_id)

    def classify(self, name: str) -> EntryKind:
        """Classify a name found in the base directory (one dict and one regex lookup).

        Only a UUID is an image: a zero-byte oslo lock with any other name,
        an operator's ``backup`` or ``README``, or a state directory's name
        is foreign.
        """
        kind = self.special_names.get(name)
        if kind is not None:
            return kind
        return EntryKind.IMAGE if is_uuid(name) else EntryKind.FOREIGN


def scan_regular_files(directory: str) -> Iterator[FileInfo]:
    """Yield every regular file directly in ``directory``.

    Uses ``lstat``: symlinks, directories, fifos and sockets are skipped, so a
    symlink pointing out of the cache is never counted or followed. An entry
    that vanishes between listing and stat is skipped, not an error: Glance's
    own commits and deletes race with any scan. A missing directory yields
    nothing.
    """
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return
    with it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield FileInfo.from_stat(entry.name, entry.path, st)


__all__ = [
    "GLANCE_RESERVED_NAMES",
    "STATES",
    "CacheLayout",
    "EntryKind",
    "FileInfo",
    "scan_regular_files",
]
