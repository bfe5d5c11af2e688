"""The cache at a glance: counts and bytes per state, as of one moment.

Both ``status`` and the metrics collector read the cache through
``compute_cache_state``; this module imports nothing of Prometheus, so the
``status`` command stays quick to start.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..driver import STATES, CacheDriver, FileInfo
from ..driver.store import dead_rows
from ..maintenance import take_snapshot
from ..redact import mask_url

#: Most foreign names ``status`` lists (the count is always complete).
FOREIGN_LIST_LIMIT = 100


@dataclass(frozen=True)
class StoreInfo:
    """Where a cache's rows live: ``status`` shows it, ``glance_cache_info`` exports it.

    ``node_url`` (this node's ``node_reference_url``) only with centralized_db,
    shown with any password masked. Never the database URL: it holds a password.
    """

    driver: str
    node_url: str | None = None

    @classmethod
    def of(cls, driver: str, node_url: str | None) -> StoreInfo:
        """The store of ``cache.driver``; a node URL only where rows are scoped by one."""
        scoped = driver == "centralized_db" and node_url is not None
        return cls(driver, mask_url(node_url) if scoped and node_url else None)

    def as_dict(self) -> dict[str, str]:
        """``driver`` and, with centralized_db, ``node_url`` (status JSON, metric labels)."""
        shown = {"driver": self.driver}
        if self.node_url is not None:
            shown["node_url"] = self.node_url
        return shown


#: the store of a cache whose rows are in ``cache.db``
SQLITE_STORE = StoreInfo("sqlite")


@dataclass(frozen=True)
class ImageStat:
    """One image with its own series (``image_hits_total``, ``image_size_bytes``)."""

    image_id: str
    hits: int
    size_bytes: int


@dataclass(frozen=True)
class CacheState:
    """Everything the cache-state families export, computed at one moment."""

    computed_at: float
    #: seconds the computation took
    duration: float
    #: Glance-compatible: every image file in the base directory
    size_bytes: int
    max_size_bytes: int
    #: image files in the base directory, tracked or orphaned
    cached_images: int
    incomplete_images: int
    invalid_images: int
    queued_images: int
    #: mtime of the oldest queue entry; None when the queue is empty
    queue_oldest_timestamp: float | None
    orphan_files: int
    #: rows without an image file, rows whose id is not a UUID included
    phantom_rows: int
    #: rows whose id is not a UUID (NULL, ``README``...): Glance never serves them
    invalid_rows: int
    #: bytes no row accounts for: orphan image files plus foreign files
    untracked_bytes: int
    #: files in the cache directory or its state directories whose name is
    #: not a UUID (nor the database, its side files or a lock file): never touched
    foreign_files: int
    #: their paths relative to the cache directory, sorted, at most FOREIGN_LIST_LIMIT
    foreign_names: tuple[str, ...]
    filesystem_free_bytes: int
    #: sum of ``hits`` over every row
    hits: int
    #: tracked images with the most hits (ties by id), at most per_image_limit
    top_images: tuple[ImageStat, ...]
    #: tracked images left out of ``top_images``
    images_omitted: int
    #: ``hits`` of every row by image id (what ``hits_increase`` compares)
    image_hits: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    #: cached images (row and file) Glance deleted, and their file bytes; None
    #: when the store cannot tell (sqlite, or no SELECT on Glance's ``images``)
    dead_images: int | None = None
    dead_bytes: int | None = None


def hits_increase(before: Mapping[str, int] | None, now: Mapping[str, int]) -> int:
    """Hits counted between two measurements of the rows, whoever deleted rows.

    ``before`` None (no earlier measurement in this process): 0, so the
    count starts when the process does. Otherwise, per image in ``now``: its
    hits minus those ``before``; all its hits when it was absent then (cached
    since, every hit is new) or had more then (evicted and cached again
    since: ``hits`` restarts at 0 and only ever grows). Images gone since
    add nothing, so an eviction never lowers the count. Missed (an
    undercount, never a drop): hits taken between the last measurement and
    an eviction, and, for an image evicted and cached again that already
    has at least its old count, its hits up to that count.
    """
    if before is None:
        return 0
    total = 0
    for image_id, hits in now.items():
        previous = before.get(image_id, 0)
        total += hits - previous if hits >= previous else hits
    return total


def compute_cache_state(
    driver: CacheDriver, max_size: int, per_image_limit: int, now: float | None = None
) -> CacheState:
    """Measure the cache: one snapshot plus scans of ``incomplete/``,
    ``invalid/`` and ``queue/``. Raises the driver's errors (missing or
    corrupt database) and OSError (missing cache directory)."""
    started = time.monotonic()
    snapshot = take_snapshot(driver, now)
    tracked = snapshot.tracked()
    orphans = len(snapshot.orphans())
    states = {state: driver.scan_state_dir(state) for state in STATES}
    queue = states["queue"][0]
    foreign = _foreign_names(snapshot.foreign(), states)
    limit = max(0, per_image_limit)
    top = heapq.nsmallest(limit, tracked.values(), key=lambda p: (-p[0].hits, p[0].image_id))
    dead = _dead_tracked(driver, tracked)
    return CacheState(
        computed_at=snapshot.taken_at,
        duration=time.monotonic() - started,
        size_bytes=snapshot.size_bytes,
        max_size_bytes=max_size,
        cached_images=len(tracked) + orphans,
        incomplete_images=len(states["incomplete"][0]),
        invalid_images=len(states["invalid"][0]),
        queued_images=len(queue),
        queue_oldest_timestamp=min((info.mtime for info in queue), default=None),
        orphan_files=orphans,
        phantom_rows=len(snapshot.phantoms()) + len(snapshot.invalid_rows),
        invalid_rows=len(snapshot.invalid_rows),
        untracked_bytes=snapshot.untracked_bytes() + sum(foreign.values()),
        foreign_files=len(foreign),
        foreign_names=tuple(sorted(foreign)[:FOREIGN_LIST_LIMIT]),
        filesystem_free_bytes=snapshot.filesystem.free_bytes,
        hits=sum(row.hits for row in snapshot.rows.values()),
        top_images=tuple(ImageStat(row.image_id, row.hits, info.size) for row, info in top),
        images_omitted=len(tracked) - len(top),
        image_hits={image_id: row.hits for image_id, row in snapshot.rows.items()},
        dead_images=None if dead is None else len(dead),
        dead_bytes=None if dead is None else sum(tracked[key][1].size for key in dead),
    )


def _dead_tracked(driver: CacheDriver, tracked: Mapping[str, object]) -> set[str] | None:
    """Tracked images (row and file) Glance deleted; None when the store cannot tell."""
    rows = dead_rows(driver.store)
    return None if rows is None else {r.image_id for r in rows if r.image_id in tracked}


def _foreign_names(
    base: list[FileInfo], states: dict[str, tuple[list[FileInfo], list[FileInfo]]]
) -> dict[str, int]:
    """Foreign files of the base and state directories: relative path -> bytes."""
    found = {info.name: info.size for info in base}
    for state, (_images, foreign) in states.items():
        found.update((f"{state}/{info.name}", info.size) for info in foreign)
    return found


def status_document(state: CacheState, cache_dir: str, store: StoreInfo) -> dict[str, Any]:
    """The ``status --json`` document: DESIGN section 4 keys, then a few more."""
    return {
        "cache_dir": cache_dir,
        **store.as_dict(),
        "size_bytes": state.size_bytes,
        "max_size_bytes": state.max_size_bytes,
        "cached_images": state.cached_images,
        "queued_images": state.queued_images,
        "incomplete_files": state.incomplete_images,
        "invalid_files": state.invalid_images,
        "orphan_files": state.orphan_files,
        "phantom_rows": state.phantom_rows,
        "invalid_rows": state.invalid_rows,
        "untracked_bytes": state.untracked_bytes,
        "foreign_files": state.foreign_files,
        "foreign": list(state.foreign_names),
        "filesystem_free_bytes": state.filesystem_free_bytes,
        "hits": state.hits,
        "queue_oldest_timestamp": state.queue_oldest_timestamp,
        "computed_at": state.computed_at,
    }
