"""The files of a cache directory: Glance's driver API minus the rows.

Paths, listings, the state directories (``incomplete/``, ``invalid/``,
``queue/``), the queue and the cleaning of files are the same for every
metadata store: Glance's ``sqlite`` and ``centralized_db`` drivers share
this layout and differ only in where the rows live. ``CacheFiles`` holds
that shared half; ``CacheDriver`` (``base.py``) adds a store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..log import get_logger
from .errors import BadDriverConfiguration, CacheDirectoryError
from .ids import validate_image_id
from .layout import STATES, CacheLayout, EntryKind, FileInfo, scan_regular_files
from .openfiles import scan_writers
from .settings import CacheSettings

LOG = get_logger(__name__)


@dataclass(frozen=True)
class BaseScan:
    """The base directory, classified: image files and everything else."""

    images: dict[str, FileInfo]
    others: dict[EntryKind, list[FileInfo]]

    @property
    def image_bytes(self) -> int:
        return sum(info.size for info in self.images.values())


def delete_cached_file(path: str) -> None:
    """Remove ``path``; a file that is already gone is not an error.

    Other ``OSError``s (EACCES, EIO, EROFS...) propagate, as in Glance.
    """
    LOG.debug("deleting image cache file", path=path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_regular_file(path: str) -> bool:
    """True for a regular file; a symlink is never one (Glance follows it)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def fsync_directory(path: str) -> None:
    """Make unlinks and renames in ``path`` durable before we commit rows."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def layout_of(settings: CacheSettings) -> CacheLayout:
    """The layout ``settings`` describe; refuses an unset cache directory."""
    if settings.cache_dir is None or not os.fspath(settings.cache_dir):
        raise BadDriverConfiguration(
            "no cache directory configured (Glance's image_cache_dir is unset)"
        )
    return CacheLayout.create(settings.cache_dir, settings.db)


class CacheFiles:
    """The file half of a cache driver: one cache directory's layout."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.layout = layout_of(settings)
        self.base_dir = self.layout.base_dir

    @property
    def lock_dir(self) -> str:
        """Where Glance's oslo lock files live: ``lock_path``, else the cache dir."""
        return self.settings.effective_lock_path or self.base_dir

    def set_paths(self) -> None:
        """Create the base directory and ``incomplete/ invalid/ queue/``."""
        if os.path.lexists(self.base_dir) and not os.path.isdir(self.base_dir):
            raise CacheDirectoryError(f"{self.base_dir}: cache path exists but is not a directory")
        for path in (self.base_dir, *(self.layout.state_dir(s) for s in STATES)):
            os.makedirs(path, exist_ok=True)

    # -------------------------------------------------------------- paths/ids

    def _id(self, image_id: object) -> str:
        return validate_image_id(image_id, self.layout.reserved_names)

    def get_image_filepath(self, image_id: object, cache_status: str = "active") -> str:
        """Path of the image file for ``cache_status`` (``active`` or a state dir)."""
        return self.layout.image_path(self._id(image_id), cache_status)

    def get_image_size(self, image_id: object) -> int:
        """Size of the cached file; raises FileNotFoundError when not cached.

        A symlink or other non-regular entry is "not cached" (Glance follows it).
        """
        path = self.get_image_filepath(image_id)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        return st.st_size

    def file_present(self, key: str) -> bool:
        """Whether a row's id names an entry in the base directory (no path is
        built for an id that is not a valid image id)."""
        if self.layout.classify(key) is not EntryKind.IMAGE:
            return False
        return os.path.lexists(self.layout.image_path(key))

    def stat_image(self, image_id: str) -> FileInfo | None:
        """``lstat`` of a cached image file; None unless it is a regular file."""
        if self.layout.classify(image_id) is not EntryKind.IMAGE:
            return None
        path = self.layout.image_path(image_id)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return FileInfo.from_stat(image_id, path, st) if stat.S_ISREG(st.st_mode) else None

    # ---------------------------------------------------------------- listing

    def iter_image_files(self, directory: str | None = None) -> Iterator[FileInfo]:
        """Stream regular files named like image ids in ``directory``
        (default: the base directory); one scandir, ``lstat`` per entry."""
        classify = self.layout.classify
        for info in scan_regular_files(self.base_dir if directory is None else directory):
            if classify(info.name) is EntryKind.IMAGE:
                yield info

    def iter_image_sizes(self) -> Iterator[tuple[str, int]]:
        """Stream ``(name, st_size)`` of image files: the lean path for sizing."""
        classify, image = self.layout.classify, EntryKind.IMAGE
        try:
            it = os.scandir(self.base_dir)
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                if classify(entry.name) is not image:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield entry.name, st.st_size

    def scan_base(self) -> BaseScan:
        """Classify every regular file of the base directory (one scandir)."""
        images: dict[str, FileInfo] = {}
        others: dict[EntryKind, list[FileInfo]] = {}
        for info in scan_regular_files(self.base_dir):
            kind = self.layout.classify(info.name)
            if kind is EntryKind.IMAGE:
                images[info.name] = info
            else:
                others.setdefault(kind, []).append(info)
        return BaseScan(images=images, others=others)

    def scan_state(self, state: str) -> list[FileInfo]:
        """Regular files with valid image-id names in a state directory."""
        return self.scan_state_dir(state)[0]

    def scan_state_dir(self, state: str) -> tuple[list[FileInfo], list[FileInfo]]:
        """``(image files, foreign files)`` of a state directory, in one scandir.

        A state directory replaced by a symlink is not followed (nothing is
        listed, so clean never deletes in the link's target): Glance creates
        these directories itself, so a link is planted, not configured.
        """
        directory = self.layout.state_dir(state)
        if os.path.islink(directory):
            LOG.warning("ignoring a symlink, not a directory", path=directory)
            return [], []
        images: list[FileInfo] = []
        foreign: list[FileInfo] = []
        classify, image = self.layout.classify, EntryKind.IMAGE
        for info in scan_regular_files(directory):
            (images if classify(info.name) is image else foreign).append(info)
        return images, foreign

    def get_cache_files(self, basepath: str) -> Iterator[str]:
        """Yield paths of the cache's files in ``basepath``.

        Differs from Glance: in the base directory only image files are
        yielded (never the db, its journal/WAL files or lock files); symlinks
        are never followed; files vanishing mid-scan are skipped.
        """
        for info in self.iter_image_files(os.path.abspath(basepath)):
            yield info.path

    def get_cache_size(self) -> int:
        """Bytes of image files in the base directory (tracked and orphaned).

        Like Glance this is the sum of ``st_size`` of the files, so an orphan
        counts; unlike Glance, lock files and SQLite side files never count,
        and a file vanishing between listing and stat is simply skipped.
        """
        return sum(size for _, size in self.iter_image_sizes())

    # ----------------------------------------------------------------- states

    def is_cached(self, image_id: object) -> bool:
        return is_regular_file(self.get_image_filepath(image_id))

    def is_being_cached(self, image_id: object) -> bool:
        return is_regular_file(self.get_image_filepath(image_id, "incomplete"))

    def is_queued(self, image_id: object) -> bool:
        return is_regular_file(self.get_image_filepath(image_id, "queue"))

    def is_cacheable(self, image_id: object) -> bool:
        return not (self.is_cached(image_id) or self.is_being_cached(image_id))

    # ------------------------------------------------------------------ queue

    def queue_image(self, image_id: object) -> bool:
        """Create ``queue/<id>``; False if cached, being cached or queued."""
        key = self._id(image_id)
        if self.is_cached(key):
            LOG.info("not queueing image: already cached", image_id=key)
            return False
        if self.is_being_cached(key):
            LOG.info("not queueing image: already being written to cache", image_id=key)
            return False
        path = self.layout.image_path(key, "queue")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            LOG.info("not queueing image: already queued", image_id=key)
            return False
        os.close(fd)
        return True

    def get_queued_images(self) -> list[str]:
        """Queued ids, oldest first (by mtime, then id); vanishing files skipped."""
        entries = self.scan_state("queue")
        return [info.name for info in sorted(entries, key=lambda i: (i.mtime, i.name))]

    def delete_queued_image(self, image_id: object) -> None:
        delete_cached_file(self.get_image_filepath(image_id, "queue"))

    def delete_all_queued_images(self) -> int:
        """Remove every queue entry; return how many there were."""
        entries = self.scan_state("queue")
        for info in entries:
            delete_cached_file(info.path)
        return len(entries)

    # ------------------------------------------------------------------ clean

    def delete_invalid_files(self) -> None:
        """Remove every file in ``invalid/`` (no age check, as in Glance).

        Differs from Glance: a file that cannot be deleted is logged and
        skipped instead of aborting the clean.
        """
        for info in self.scan_state("invalid"):
            self._delete_logged(info.path)

    def delete_stalled_files(self, older_than: float) -> None:
        """Remove ``incomplete/`` files with mtime strictly before ``older_than``.

        Differs from Glance: a file some process holds open for writing is a
        live download and is kept whatever its age; a file that vanishes or
        cannot be deleted is logged and skipped.
        """
        stale = [i for i in self.scan_state("incomplete") if i.mtime < older_than]
        if not stale:
            return
        scan = scan_writers({(i.device, i.inode) for i in stale})
        if scan.uninspectable:
            LOG.warning(
                "could not inspect processes; a download one of them holds open"
                " would not be recognised",
                processes=scan.uninspectable,
            )
        for info in stale:
            if (info.device, info.inode) in scan.busy:
                LOG.info("keeping a file open for writing by a running process", path=info.path)
                continue
            self._delete_logged(info.path)

    @staticmethod
    def _delete_logged(path: str) -> None:
        """Delete ``path``; a failure is logged, not raised (clean goes on)."""
        try:
            delete_cached_file(path)
        except OSError as exc:
            LOG.error("failed to delete file", path=path, error=str(exc))

    def clean(self, stall_time: float | None = None) -> None:
        """Delete invalid files, then incomplete files older than ``stall_time``."""
        self.delete_invalid_files()
        if stall_time is None:
            stall_time = self.settings.stall_time
        self.delete_stalled_files(time.time() - stall_time)


__all__ = [
    "BaseScan",
    "CacheFiles",
    "delete_cached_file",
    "fsync_directory",
    "is_regular_file",
    "layout_of",
]
