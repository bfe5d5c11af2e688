"""Glance's cache driver API over the files of a cache and one metadata store.

Method names, arguments and return values follow Glance's
``glance.image_cache.drivers`` (``base.Driver`` and its ``sqlite`` and
``centralized_db`` subclasses), so that code written against Glance's driver
runs against this one. Where Glance is wrong we deliberately differ (see
docs/compatibility.md); each such place says so in its docstring.

``CacheDriver`` knows nothing of SQL: rows go through ``self.store``, a
``MetadataStore``. It also offers the few operations maintenance needs that
join a file and its row (``measure_base``, ``adopt_files``, ``delete_rows``).
The driver is configured from a ``CacheSettings`` object and knows nothing of
the agent, its config file or its scheduler.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from .files import CacheFiles, delete_cached_file, fsync_directory, is_regular_file
from .layout import FileInfo
from .settings import CacheSettings
from .store import CachedRow, MetadataStore


class CacheDriver(CacheFiles):
    """A cache directory (``CacheFiles``) whose rows live in ``store``."""

    #: Glance's ``image_cache_driver`` name for where the rows live.
    driver_name: str = "sqlite"
    #: this node's ``node_reference_url`` (centralized_db only), else None
    node_url: str | None = None

    def __init__(self, settings: CacheSettings, store: MetadataStore) -> None:
        super().__init__(settings)
        self.store = store

    # ---------------------------------------------------------------- listing

    def get_cached_images(self) -> list[dict[str, Any]]:
        """Rows as Glance lists them: dicts ordered by ``image_id``.

        A database error raises (Glance returns None).
        """
        rows = sorted(self.store.list_rows(), key=lambda r: r.image_id)
        return [row.as_glance_dict() for row in rows]

    def get_hit_count(self, image_id: object) -> int:
        """Hits of a cached image; 0 if not cached or if it has no row.

        Glance raises TypeError for a file without a row; we return 0.
        """
        key = self._id(image_id)
        if not self.is_cached(key):
            return 0
        row = self.store.rows_by_id([key]).get(key)
        return 0 if row is None else row.hits

    def get_least_recently_accessed(self) -> tuple[str, int] | None:
        """``(image_id, file size)`` of the LRU row; None when there are none.

        Ties are broken by image id (Glance's order is unspecified). A row
        whose file is missing reports size 0, as in Glance.
        """
        row = next(self.store.iter_rows_lru(page_size=1), None)
        if row is None:
            return None
        try:
            size = os.lstat(os.path.join(self.base_dir, row.image_id)).st_size
        except OSError:
            size = 0
        return row.image_id, size

    def measure_base(self) -> tuple[int, int, int]:
        """``(image bytes, untracked bytes, image files)`` of the base directory.

        Sizes are the files' ``st_size`` (the file is the truth, not the row).
        One directory scan maps names to sizes; one sequential pass over the
        row ids strikes out the files that have a row, leaving the untracked
        ones. Sequential reads avoid the random page reads of a per-file
        lookup, which dominate at 100k images; the price is the name-to-size
        map (about 150 bytes per image) for the call's duration.
        """
        sizes = dict(self.iter_image_sizes())
        total, count = sum(sizes.values()), len(sizes)
        for image_id in self.store.iter_row_ids():
            sizes.pop(image_id, None)
        return total, sum(sizes.values()), count

    # --------------------------------------------------------------- deletion

    def delete_cached_image(self, image_id: object) -> None:
        """Remove the file, then its row (a failure leaves a phantom, not an orphan)."""
        key = self._id(image_id)
        delete_cached_file(self.layout.image_path(key))
        self.store.delete_rows([key])

    def delete_all_cached_images(self) -> int:
        """Remove every image file and every row; return image files removed.

        Differs from Glance: lock files, the database's side files and
        foreign files (any name that is not a UUID, even a zero-byte one)
        are neither deleted nor counted; a database that cannot be written
        raises before the first file is deleted (Glance deletes the files,
        then fails on the rows).
        """
        self.store.check_writable()
        deleted = 0
        for info in self.scan_base().images.values():
            delete_cached_file(info.path)
            deleted += 1
        fsync_directory(self.base_dir)
        self.store.delete_all_rows()
        return deleted

    # --------------------------------------------------------------- read/write

    @contextlib.contextmanager
    def open_for_read(self, image_id: object) -> Iterator[IO[bytes]]:
        """Yield the cached file; count a hit only if the body ends normally.

        A symlink in place of the file is refused (ELOOP), never followed.
        """
        key = self._id(image_id)
        path = self.layout.image_path(key)
        # O_NONBLOCK: a fifo planted under an image's name must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as cache_file:
            yield cache_file
        self.store.record_hit(key, time.time())

    @contextlib.contextmanager
    def open_for_write(self, image_id: object) -> Iterator[IO[bytes]]:
        """Yield ``incomplete/<id>`` for writing; commit or roll back on exit.

        Commit renames the file into the base directory, drops the queue entry
        and records the row. Rollback (an exception, or a body abandoned by a
        closed generator) moves the partial file to ``invalid/``.

        Differs from Glance: commit upserts (Glance's INSERT fails on an
        existing row and leaves it stale), and rollback keeps the row of an
        image whose good file is still cached (Glance deletes it, orphaning
        the file).
        """
        key = self._id(image_id)
        incomplete_path = self.layout.image_path(key, "incomplete")
        # O_NOFOLLOW: a symlink planted in incomplete/ must not truncate its target.
        fd = os.open(incomplete_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        committed = False
        try:
            with os.fdopen(fd, "wb") as cache_file:
                yield cache_file
        except Exception:
            self._rollback(key, incomplete_path)
            raise
        else:
            self._commit(key, incomplete_path)
            committed = True
        finally:
            if not committed and os.path.exists(incomplete_path):
                self._rollback(key, incomplete_path)

    def _commit(self, key: str, incomplete_path: str) -> None:
        final_path = self.layout.image_path(key)
        os.rename(incomplete_path, final_path)
        delete_cached_file(self.layout.image_path(key, "queue"))
        self.store.record_cached(key, os.path.getsize(final_path), time.time())

    def _rollback(self, key: str, incomplete_path: str) -> None:
        if os.path.exists(incomplete_path):
            os.rename(incomplete_path, self.layout.image_path(key, "invalid"))
        if is_regular_file(self.layout.image_path(key)):
            return  # the previously cached file is still good: keep its row
        self.store.delete_rows([key])

    # ---------------------------------------- files and rows, for maintenance

    def delete_rows(self, image_ids: Sequence[str], only_if_file_missing: bool = False) -> int:
        """Delete rows in short batches; return rows deleted.

        With ``only_if_file_missing`` a row is kept when its file exists at
        the moment of deletion (a concurrent re-cache brought it back).
        """
        keep = self.file_present if only_if_file_missing else None
        return self.store.delete_rows(image_ids, keep)

    def adopt_files(self, infos: Sequence[FileInfo]) -> int:
        """Give rowless image files a row from ``stat``; return rows created.

        ``last_modified`` is the mtime, ``last_accessed`` the newer of atime
        and mtime, hits 0. A row Glance inserted in the meantime wins.
        """
        return self.store.adopt(
            [CachedRow(i.name, max(i.atime, i.mtime), i.mtime, i.size, 0) for i in infos]
        )


__all__ = ["CacheDriver"]
