"""The sqlite cache driver: Glance's driver API, on Glance's on-disk format.

Method names, arguments and return values follow
``glance.image_cache.drivers.sqlite.Driver`` so that code written against
Glance's driver runs against this one. Where Glance is wrong we deliberately
differ (see docs/compatibility.md); each such place says so in its docstring.

The driver is configured from a ``CacheSettings`` object and knows nothing of
the agent, its config file or its scheduler.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .db import SCHEMA, Database, TxnObserver
from .errors import BadDriverConfiguration, BadRowValue, CacheDirectoryError
from .ids import is_uuid, validate_image_id
from .layout import STATES, CacheLayout, EntryKind, FileInfo, scan_regular_files
from .openfiles import scan_writers
from .oslo_lock import external_lock
from .settings import CacheSettings

LOG = logging.getLogger(__name__)

ROW_COLUMNS = "image_id, last_accessed, last_modified, size, hits"

#: Rows changed per write transaction in bulk operations: small enough that
#: one transaction stays far below Glance's 2 s lock budget (about 5 ms).
BATCH_ROWS = 500

#: Rows per statement of a whole-table read. A page holds SQLite's shared
#: lock, which fails Glance's COMMITs, for about 20 ms (100k rows: 5 pages):
#: a Glance write that collides with one page waits one 50 ms retry, as it
#: would for any shorter statement, and fewer pages collide less often.
READ_PAGE_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class CachedRow:
    """One row of ``cached_images``."""

    image_id: str
    last_accessed: float
    last_modified: float
    size: int
    hits: int

    @classmethod
    def from_db(cls, r: tuple[Any, ...], db_path: str = "cache.db") -> CachedRow:
        """Build from a ``SELECT {ROW_COLUMNS}`` tuple; NULLs read as Glance's defaults.

        A value that is not a finite number (``hits = 'many'``, written by
        hand: SQLite keeps text it cannot convert) raises BadRowValue naming
        ``db_path``, the image id and the column.

        A NULL ``image_id`` reads as ``""``: never a UUID, so such a row is
        never served or evicted, and reconcile removes it.
        """
        image_id = "" if r[0] is None else str(r[0])
        accessed, modified, size, hits = r[1], r[2], r[3], r[4]
        if type(accessed) is float and type(modified) is float and type(size) is type(hits) is int:
            return cls(image_id, accessed, modified, size, hits)  # what Glance writes: fast path
        return cls(
            image_id,
            _number(db_path, image_id, "last_accessed", accessed, float),
            _number(db_path, image_id, "last_modified", modified, float),
            _number(db_path, image_id, "size", size, int),
            _number(db_path, image_id, "hits", hits, int),
        )

    def as_glance_dict(self) -> dict[str, Any]:
        """The dict shape Glance's ``get_cached_images`` returns."""
        return {
            "image_id": self.image_id,
            "hits": self.hits,
            "last_accessed": self.last_accessed,
            "last_modified": self.last_modified,
            "size": self.size,
        }


def _number(
    db_path: str, image_id: str, column: str, value: Any, kind: type[int] | type[float]
) -> Any:
    """``value`` as ``kind``; NULL is Glance's default 0, a non-number raises BadRowValue."""
    if value is None:
        return kind()
    if isinstance(value, int | float) and math.isfinite(value):
        return kind(value)
    raise BadRowValue(db_path, image_id, column, value)


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
    LOG.debug("Deleting image cache file '%s'", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _is_regular_file(path: str) -> bool:
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


class Driver:
    """Cache driver for Glance's ``sqlite`` layout (``cache.db`` + state dirs)."""

    def __init__(self, settings: CacheSettings, txn_observer: TxnObserver | None = None) -> None:
        if settings.cache_dir is None or not os.fspath(settings.cache_dir):
            raise BadDriverConfiguration(
                "no cache directory configured (Glance's image_cache_dir is unset)"
            )
        self.settings = settings
        self.layout = CacheLayout.create(settings.cache_dir, settings.db)
        self.base_dir = self.layout.base_dir
        self.db_path = self.layout.db_path
        self.db = Database(self.db_path, settings.busy_timeout, txn_observer)

    @property
    def lock_dir(self) -> str:
        """Where Glance's oslo lock files live: ``lock_path``, else the cache dir."""
        return self.settings.effective_lock_path or self.base_dir

    # ------------------------------------------------------------------ setup

    def configure(self) -> None:
        """Create the state directories and the database, like Glance does."""
        self.set_paths()
        self.initialize_db()

    def set_paths(self) -> None:
        """Create the base directory and ``incomplete/ invalid/ queue/``."""
        if os.path.lexists(self.base_dir) and not os.path.isdir(self.base_dir):
            raise CacheDirectoryError(f"{self.base_dir}: cache path exists but is not a directory")
        for path in (self.base_dir, *(self.layout.state_dir(s) for s in STATES)):
            os.makedirs(path, exist_ok=True)

    def initialize_db(self) -> None:
        """Create ``cached_images`` if needed; the only method that creates the db.

        Runs under Glance's ``image_cache_db_init`` lock and inside our busy
        timeout (Glance's ``executescript`` has zero lock tolerance). Existing
        rows and the journal mode are left as they are.
        """
        os.makedirs(self.lock_dir, exist_ok=True)
        with (
            external_lock(self.lock_dir, "image_cache_db_init", timeout=self.settings.busy_timeout),
            self.db.connect(create=True) as conn,
        ):
            conn.execute(SCHEMA)
            self.db.check_schema(conn)

    def check_writable(self) -> None:
        """Raise DatabaseReadOnly (or DatabaseLocked) unless the database can
        be written now: call it before deleting files whose rows must go too.
        A real write probe, rolled back (``Database.check_writable``)."""
        self.db.check_writable()

    def check_database(self) -> list[str]:
        """Verify schema and run ``PRAGMA quick_check``; return problems found."""
        with self.db.connect() as conn:
            self.db.check_schema(conn)
        return self.db.quick_check()

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
            LOG.warning("Ignoring '%s': it is a symlink, not a directory", directory)
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

    def list_rows(self) -> list[CachedRow]:
        """Every row of ``cached_images``, unordered (read in rowid pages)."""
        return [
            CachedRow.from_db(r, self.db_path)
            for page in self._read_pages(f"{ROW_COLUMNS}, rowid", "rowid")
            for r in page
        ]

    def _read_pages(self, columns: str, key: str) -> Iterator[list[tuple[Any, ...]]]:
        """``cached_images`` in ``key`` order as raw tuples, one page per statement.

        ``key`` is unique (``rowid`` or ``image_id``) and the last of
        ``columns``. Keyset pagination: every page is its own short statement,
        run to its end before it is yielded, so no lock is held while the
        caller converts it (a row updated between pages shows its newer values,
        as if read a moment later).
        """
        select = f"SELECT {columns} FROM cached_images"
        with self.db.connect() as conn:
            page = self.db.fetch_all(conn, f"{select} ORDER BY {key} LIMIT ?", (READ_PAGE_ROWS,))
            while True:
                yield page
                if len(page) < READ_PAGE_ROWS:
                    return
                page = self.db.fetch_all(
                    conn,
                    f"{select} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                    (page[-1][-1], READ_PAGE_ROWS),
                )

    def row_ids(self) -> list[str]:
        """The ``image_id`` of every row (NULL ids left out); no other column
        is read, so a row with a mistyped value does not stop a bulk delete."""
        with self.db.connect() as conn:
            found = self.db.fetch_all(
                conn, "SELECT image_id FROM cached_images WHERE image_id IS NOT NULL"
            )
        return [str(r[0]) for r in found]

    def iter_rows_lru(
        self, page_size: int = 1000, max_page_size: int = 16000
    ) -> Iterator[CachedRow]:
        """Rows in ``(last_accessed, image_id)`` order, read a page at a time.

        Keyset pagination: each page is one short query (no lock held while
        the caller works through it) and memory stays at one page however
        large the table is. Every page costs a full scan of the table (it
        has no index on ``last_accessed``), so pages double in size up to
        ``max_page_size``: a caller that needs k rows pays about log2(k)
        scans, not k / page_size.
        """
        order = "COALESCE(last_accessed, 0.0), image_id"
        query = f"SELECT {ROW_COLUMNS} FROM cached_images"
        after: tuple[float, str] | None = None
        while True:
            with self.db.connect() as conn:
                if after is None:
                    page = self.db.fetch_all(
                        conn, f"{query} ORDER BY {order} LIMIT ?", (page_size,)
                    )
                else:
                    page = self.db.fetch_all(
                        conn,
                        f"{query} WHERE COALESCE(last_accessed, 0.0) > ?"
                        f" OR (COALESCE(last_accessed, 0.0) = ? AND image_id > ?)"
                        f" ORDER BY {order} LIMIT ?",
                        (after[0], after[0], after[1], page_size),
                    )
            for r in page:
                yield CachedRow.from_db(r, self.db_path)
            if len(page) < page_size:
                return
            last = page[-1]
            after = (last[1] or 0.0, last[0])
            page_size = max(page_size, min(page_size * 2, max_page_size))

    def measure_base(self) -> tuple[int, int, int]:
        """``(image bytes, untracked bytes, image files)`` of the base directory.

        Sizes are the files' ``st_size`` (the file is the truth, not the row).
        One directory scan maps names to sizes; one sequential pass over
        ``cached_images`` strikes out the files that have a row, leaving the
        untracked ones. Sequential reads avoid the random page reads of a
        per-file lookup, which dominate at 100k images; the price is the
        name-to-size map (about 150 bytes per image) for the call's duration.
        """
        sizes = dict(self.iter_image_sizes())
        total, count = sum(sizes.values()), len(sizes)
        for page in self._read_pages("image_id", "image_id"):  # the covering index
            for (image_id,) in page:
                sizes.pop(str(image_id), None)
        return total, sum(sizes.values()), count

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

    def get_cached_images(self) -> list[dict[str, Any]]:
        """Rows as Glance lists them: dicts ordered by ``image_id``.

        A database error raises (Glance returns None).
        """
        rows = sorted(self.list_rows(), key=lambda r: r.image_id)
        return [row.as_glance_dict() for row in rows]

    def get_hit_count(self, image_id: object) -> int:
        """Hits of a cached image; 0 if not cached or if it has no row.

        Glance raises TypeError for a file without a row; we return 0.
        """
        key = self._id(image_id)
        if not self.is_cached(key):
            return 0
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT hits FROM cached_images WHERE image_id = ?", (key,)
            ).fetchone()
        return int(row[0] or 0) if row else 0

    def get_least_recently_accessed(self) -> tuple[str, int] | None:
        """``(image_id, file size)`` of the LRU row; None when there are none.

        Ties are broken by image id (Glance's order is unspecified). A row
        whose file is missing reports size 0, as in Glance.
        """
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT image_id FROM cached_images ORDER BY last_accessed, image_id LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        image_id = str(row[0])
        try:
            size = os.lstat(os.path.join(self.base_dir, image_id)).st_size
        except OSError:
            size = 0
        return image_id, size

    # ----------------------------------------------------------------- states

    def is_cached(self, image_id: object) -> bool:
        return _is_regular_file(self.get_image_filepath(image_id))

    def is_being_cached(self, image_id: object) -> bool:
        return _is_regular_file(self.get_image_filepath(image_id, "incomplete"))

    def is_queued(self, image_id: object) -> bool:
        return _is_regular_file(self.get_image_filepath(image_id, "queue"))

    def is_cacheable(self, image_id: object) -> bool:
        return not (self.is_cached(image_id) or self.is_being_cached(image_id))

    # ------------------------------------------------------------------ queue

    def queue_image(self, image_id: object) -> bool:
        """Create ``queue/<id>``; False if cached, being cached or queued."""
        key = self._id(image_id)
        if self.is_cached(key):
            LOG.info("Not queueing image '%s'. Already cached.", key)
            return False
        if self.is_being_cached(key):
            LOG.info("Not queueing image '%s'. Already being written to cache", key)
            return False
        path = self.layout.image_path(key, "queue")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            LOG.info("Not queueing image '%s'. Already queued.", key)
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

    # --------------------------------------------------------------- deletion

    def delete_cached_image(self, image_id: object) -> None:
        """Remove the file, then its row (a failure leaves a phantom, not an orphan)."""
        key = self._id(image_id)
        delete_cached_file(self.layout.image_path(key))
        with self.db.writing() as conn:
            conn.execute("DELETE FROM cached_images WHERE image_id = ?", (key,))

    def delete_all_cached_images(self) -> int:
        """Remove every image file and every row; return image files removed.

        Differs from Glance: lock files, the database's side files and
        foreign files (any name that is not a UUID, even a zero-byte one)
        are neither deleted nor counted; a database that cannot be written
        raises before the first file is deleted (Glance deletes the files,
        then fails on the rows).
        """
        self.check_writable()
        deleted = 0
        for info in self.scan_base().images.values():
            delete_cached_file(info.path)
            deleted += 1
        fsync_directory(self.base_dir)
        with self.db.writing() as conn:
            conn.execute("DELETE FROM cached_images")
        return deleted

    def delete_invalid_files(self) -> None:
        """Remove every file in ``invalid/`` (no age check, as in Glance).

        Differs from Glance: a file that cannot be deleted is logged and
        skipped instead of aborting the clean.
        """
        for info in self.scan_state("invalid"):
            try:
                delete_cached_file(info.path)
            except OSError as exc:
                LOG.error("Failed to delete '%s': %s", info.path, exc)

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
                "Could not inspect %d processes; a download one of them holds open"
                " would not be recognised",
                scan.uninspectable,
            )
        for info in stale:
            if (info.device, info.inode) in scan.busy:
                LOG.info("Keeping '%s': open for writing by a running process", info.path)
                continue
            try:
                delete_cached_file(info.path)
            except OSError as exc:
                LOG.error("Failed to delete '%s': %s", info.path, exc)

    def clean(self, stall_time: float | None = None) -> None:
        """Delete invalid files, then incomplete files older than ``stall_time``."""
        self.delete_invalid_files()
        if stall_time is None:
            stall_time = self.settings.stall_time
        self.delete_stalled_files(time.time() - stall_time)

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
        with self.db.writing() as conn:
            conn.execute(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                (time.time(), key),
            )

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
        size = os.path.getsize(final_path)
        now = time.time()
        with self.db.writing() as conn:
            conn.execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
                " VALUES (?, ?, ?, 0, ?)"
                " ON CONFLICT(image_id) DO UPDATE SET"
                " last_accessed = excluded.last_accessed,"
                " last_modified = excluded.last_modified, size = excluded.size",
                (key, now, now, size),
            )

    def _rollback(self, key: str, incomplete_path: str) -> None:
        if os.path.exists(incomplete_path):
            os.rename(incomplete_path, self.layout.image_path(key, "invalid"))
        if _is_regular_file(self.layout.image_path(key)):
            return  # the previously cached file is still good: keep its row
        with self.db.writing() as conn:
            conn.execute("DELETE FROM cached_images WHERE image_id = ?", (key,))

    # ------------------------------------------------- bulk ops for maintenance

    def rows_by_id(self, image_ids: Iterable[str]) -> dict[str, CachedRow]:
        """Current rows for the given ids (absent ids are missing from the result)."""
        ids = list(image_ids)
        raw: list[tuple[Any, ...]] = []
        with self.db.connect() as conn:
            for start in range(0, len(ids), BATCH_ROWS):
                chunk = ids[start : start + BATCH_ROWS]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT {ROW_COLUMNS} FROM cached_images WHERE image_id IN ({marks})"
                raw += self.db.fetch_all(conn, query, chunk)
        return {str(r[0]): CachedRow.from_db(r, self.db_path) for r in raw}

    def delete_rows(self, image_ids: Sequence[str], only_if_file_missing: bool = False) -> int:
        """Delete rows in short batches; return rows deleted.

        With ``only_if_file_missing`` a row is kept when its file exists at
        the moment of deletion (a concurrent re-cache brought it back).
        """
        deleted = 0
        for start in range(0, len(image_ids), BATCH_ROWS):
            chunk = image_ids[start : start + BATCH_ROWS]
            with self.db.writing() as conn:
                if only_if_file_missing:
                    chunk = [key for key in chunk if not self._file_present(key)]
                if chunk:
                    chunk = sorted(chunk)  # index order: neighbouring pages, a smaller journal
                    marks = ",".join("?" * len(chunk))
                    cursor = conn.execute(
                        f"DELETE FROM cached_images WHERE image_id IN ({marks})", chunk
                    )
                    deleted += cursor.rowcount
        return deleted

    def delete_rows_not_images(self, image_ids: Sequence[str]) -> int:
        """Delete rows whose id is not a UUID; return rows deleted.

        Such a row can never be served by Glance nor match a file we would
        touch, so it goes whatever the directory holds. ``""`` stands for a
        NULL id (as ``CachedRow`` reads it); UUIDs passed in are ignored.
        """
        keys = sorted({key for key in image_ids if not is_uuid(key)})
        deleted = 0
        for start in range(0, len(keys), BATCH_ROWS):
            chunk = keys[start : start + BATCH_ROWS]
            null = " OR image_id IS NULL" if "" in chunk else ""
            marks = ",".join("?" * len(chunk))
            with self.db.writing() as conn:
                cursor = conn.execute(
                    f"DELETE FROM cached_images WHERE image_id IN ({marks}){null}", chunk
                )
                deleted += cursor.rowcount
        return deleted

    def touch_rows(self, image_ids: Sequence[str], when: float) -> int:
        """Move ``last_accessed`` of the given rows forward to ``when`` (never
        back), in short batches; return rows changed. Prune uses it for a
        victim re-cached since planning, so the fresh copy is not next in line.
        """
        changed = 0
        for start in range(0, len(image_ids), BATCH_ROWS):
            chunk = sorted(image_ids[start : start + BATCH_ROWS])
            marks = ",".join("?" * len(chunk))
            with self.db.writing() as conn:
                cursor = conn.execute(
                    "UPDATE cached_images SET last_accessed = ?"
                    f" WHERE last_accessed < ? AND image_id IN ({marks})",
                    (when, when, *chunk),
                )
                changed += cursor.rowcount
        return changed

    def _file_present(self, key: str) -> bool:
        """Whether a row's id names an entry in the base directory (no path is
        built for an id that is not a valid image id)."""
        if self.layout.classify(key) is not EntryKind.IMAGE:
            return False
        return os.path.lexists(self.layout.image_path(key))

    def adopt_files(self, infos: Sequence[FileInfo]) -> int:
        """Give rowless image files a row from ``stat``; return rows created.

        ``last_modified`` is the mtime, ``last_accessed`` the newer of atime
        and mtime, hits 0. ``INSERT OR IGNORE``: a row Glance inserted in the
        meantime wins.
        """
        adopted = 0
        for start in range(0, len(infos), BATCH_ROWS):
            chunk = infos[start : start + BATCH_ROWS]
            with self.db.writing() as conn:
                for info in chunk:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO cached_images"
                        " (image_id, last_accessed, last_modified, hits, size)"
                        " VALUES (?, ?, ?, 0, ?)",
                        (info.name, max(info.atime, info.mtime), info.mtime, info.size),
                    )
                    adopted += cursor.rowcount
        return adopted

    def set_sizes(self, sizes: Sequence[tuple[str, int]]) -> int:
        """Set ``size`` for the given rows; return rows changed."""
        changed = 0
        for start in range(0, len(sizes), BATCH_ROWS):
            chunk = sizes[start : start + BATCH_ROWS]
            with self.db.writing() as conn:
                for key, size in chunk:
                    cursor = conn.execute(
                        "UPDATE cached_images SET size = ? WHERE image_id = ? AND size IS NOT ?",
                        (size, key, size),
                    )
                    changed += cursor.rowcount
        return changed

    def total_hits(self) -> int:
        """Sum of ``hits`` over all rows."""
        with self.db.connect() as conn:
            rows = self.db.fetch_all(conn, "SELECT COALESCE(SUM(hits), 0) FROM cached_images")
        return int(rows[0][0])

    def newest_access(self) -> float | None:
        """The latest ``last_accessed`` of any row (None: no rows): the most
        recent moment the cache is known to have been used."""
        with self.db.connect() as conn:
            value = conn.execute(
                "SELECT MAX(last_accessed) FROM cached_images"
                " WHERE typeof(last_accessed) IN ('real', 'integer')"  # text sorts above numbers
            ).fetchone()[0]
        return None if value is None else float(value)


__all__ = ["BaseScan", "CachedRow", "Driver", "delete_cached_file", "fsync_directory"]
