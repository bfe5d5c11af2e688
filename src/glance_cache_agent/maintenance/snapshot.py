"""One consistent-enough picture of a cache, taken before any decision.

Rows are read *before* the directory is scanned. Glance commits by renaming
the file into place and then inserting the row, so in this order a commit
racing the snapshot shows up as a young orphan (protected by the orphan
grace), never as a row without a file.

Only UUID-named files are images (``EntryKind.IMAGE``); only rows keyed by a
UUID can match one. Rows with any other id (NULL, ``README``, a state
directory's name) are kept apart as ``invalid_rows``: Glance can never serve
them, and reconcile removes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..driver import BaseScan, CacheDriver, CachedRow, EntryKind, FileInfo, is_uuid


@dataclass(frozen=True)
class FilesystemUsage:
    """``statvfs`` of the filesystem holding the cache."""

    free_bytes: int
    total_bytes: int

    @classmethod
    def of(cls, path: str) -> FilesystemUsage:
        st = os.statvfs(path)
        return cls(free_bytes=st.f_bavail * st.f_frsize, total_bytes=st.f_blocks * st.f_frsize)


class PruneView(Protocol):
    """What the prune planner needs to know about a cache."""

    @property
    def taken_at(self) -> float: ...

    @property
    def filesystem(self) -> FilesystemUsage: ...

    @property
    def size_bytes(self) -> int: ...

    def untracked_bytes(self) -> int: ...

    def lru_candidates(self, bytes_wanted: int = 0) -> Iterator[tuple[CachedRow, FileInfo]]:
        """Tracked images in eviction order; ``bytes_wanted`` hints how much
        the caller expects to take, so that a view can read ahead."""
        ...


@dataclass(frozen=True)
class CacheSnapshot:
    """Rows, base-directory files and free space at one moment."""

    taken_at: float
    #: rows keyed by a UUID: the only rows that can describe an image file
    rows: dict[str, CachedRow]
    base: BaseScan
    filesystem: FilesystemUsage
    #: ids of rows that are not UUIDs, one per row, sorted (NULL reads as "")
    invalid_rows: tuple[str, ...] = ()

    @property
    def size_bytes(self) -> int:
        """Glance-compatible size: every image file, tracked or not."""
        return self.base.image_bytes

    def tracked(self) -> dict[str, tuple[CachedRow, FileInfo]]:
        """Images with both a row and a file."""
        return {
            key: (row, self.base.images[key])
            for key, row in self.rows.items()
            if key in self.base.images
        }

    def orphans(self) -> list[FileInfo]:
        """Image files without a row."""
        return sorted(
            (info for key, info in self.base.images.items() if key not in self.rows),
            key=lambda i: i.name,
        )

    def untracked_bytes(self) -> int:
        """Bytes of image files without a row: the part of ``size_bytes``
        prune can never evict (foreign files are not part of the size)."""
        return sum(info.size for key, info in self.base.images.items() if key not in self.rows)

    def foreign(self) -> list[FileInfo]:
        """Files of the base directory whose name is not a UUID (and not the
        database, its side files or a lock file): never touched."""
        return sorted(self.base.others.get(EntryKind.FOREIGN, []), key=lambda i: i.name)

    def lru_candidates(self, bytes_wanted: int = 0) -> Iterator[tuple[CachedRow, FileInfo]]:
        """Tracked images in eviction order: ``(last_accessed, image_id)``."""
        tracked = sorted(self.tracked().values(), key=lambda p: (p[0].last_accessed, p[0].image_id))
        return iter(tracked)

    def phantoms(self) -> list[str]:
        """Ids of rows whose file is missing."""
        return sorted(key for key in self.rows if key not in self.base.images)


def take_snapshot(driver: CacheDriver, now: float | None = None) -> CacheSnapshot:
    """Read every row, then scan the base directory, then ``statvfs``."""
    rows: dict[str, CachedRow] = {}
    invalid: list[str] = []
    for row in driver.store.list_rows():
        if is_uuid(row.image_id):
            rows[row.image_id] = row
        else:
            invalid.append(row.image_id)
    base = driver.scan_base()
    return CacheSnapshot(
        taken_at=time.time() if now is None else now,
        rows=rows,
        base=base,
        filesystem=FilesystemUsage.of(driver.base_dir),
        invalid_rows=tuple(sorted(invalid)),
    )


@dataclass(frozen=True)
class StreamingSnapshot:
    """A PruneView whose memory does not grow with the number of images.

    Size and untracked bytes come from one streamed scan (rows looked up in
    batches); candidates are read from the database a page at a time in
    eviction order and ``lstat``-ed one by one, so planning a prune that
    evicts k images touches about k rows, not all of them.
    """

    driver: CacheDriver
    taken_at: float
    size_bytes: int
    untracked: int
    image_files: int
    filesystem: FilesystemUsage

    def untracked_bytes(self) -> int:
        return self.untracked

    def lru_candidates(self, bytes_wanted: int = 0) -> Iterator[tuple[CachedRow, FileInfo]]:
        """Candidates read in pages; the first page is sized to cover
        ``bytes_wanted`` at the average image size (each page is a table scan)."""
        average = self.size_bytes / self.image_files if self.image_files else 0
        expected = int(bytes_wanted / average * 1.25) + 100 if average else 0
        first_page = min(max(1000, expected), 20000)
        for row in self.driver.store.iter_rows_lru(page_size=first_page):
            info = self.driver.stat_image(row.image_id)
            if info is not None:
                yield row, info


def take_streaming_snapshot(driver: CacheDriver, now: float | None = None) -> StreamingSnapshot:
    """Measure the base directory (streamed) and the filesystem for a prune."""
    size, untracked, image_files = driver.measure_base()
    return StreamingSnapshot(
        driver=driver,
        taken_at=time.time() if now is None else now,
        size_bytes=size,
        untracked=untracked,
        image_files=image_files,
        filesystem=FilesystemUsage.of(driver.base_dir),
    )
