"""The cache at a glance: counts and bytes per state, as of one moment.

Both ``status`` and the metrics collector read the cache through
``compute_cache_state``; this module imports nothing of Prometheus, so the
``status`` command stays quick to start.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

from .driver import Driver
from .maintenance import take_snapshot


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
    phantom_rows: int
    untracked_bytes: int
    filesystem_free_bytes: int
    #: sum of ``hits`` over every row
    hits: int
    #: tracked images with the most hits (ties by id), at most per_image_limit
    top_images: tuple[ImageStat, ...]
    #: tracked images left out of ``top_images``
    images_omitted: int


def compute_cache_state(
    driver: Driver, max_size: int, per_image_limit: int, now: float | None = None
) -> CacheState:
    """Measure the cache: one snapshot plus scans of ``incomplete/``,
    ``invalid/`` and ``queue/``. Raises the driver's errors (missing or
    corrupt database) and OSError (missing cache directory)."""
    started = time.monotonic()
    snapshot = take_snapshot(driver, now)
    tracked = snapshot.tracked()
    orphans = len(snapshot.orphans())
    queue = driver.scan_state("queue")
    limit = max(0, per_image_limit)
    top = heapq.nsmallest(limit, tracked.values(), key=lambda p: (-p[0].hits, p[0].image_id))
    return CacheState(
        computed_at=snapshot.taken_at,
        duration=time.monotonic() - started,
        size_bytes=snapshot.size_bytes,
        max_size_bytes=max_size,
        cached_images=len(tracked) + orphans,
        incomplete_images=len(driver.scan_state("incomplete")),
        invalid_images=len(driver.scan_state("invalid")),
        queued_images=len(queue),
        queue_oldest_timestamp=min((info.mtime for info in queue), default=None),
        orphan_files=orphans,
        phantom_rows=len(snapshot.phantoms()),
        untracked_bytes=snapshot.untracked_bytes(),
        filesystem_free_bytes=snapshot.filesystem.free_bytes,
        hits=sum(row.hits for row in snapshot.rows.values()),
        top_images=tuple(ImageStat(row.image_id, row.hits, info.size) for row, info in top),
        images_omitted=len(tracked) - len(top),
    )


def status_document(state: CacheState, cache_dir: str) -> dict[str, Any]:
    """The ``status --json`` document: DESIGN section 4 keys, then a few more."""
    return {
        "cache_dir": cache_dir,
        "size_bytes": state.size_bytes,
        "max_size_bytes": state.max_size_bytes,
        "cached_images": state.cached_images,
        "queued_images": state.queued_images,
        "incomplete_files": state.incomplete_images,
        "invalid_files": state.invalid_images,
        "orphan_files": state.orphan_files,
        "phantom_rows": state.phantom_rows,
        "untracked_bytes": state.untracked_bytes,
        "filesystem_free_bytes": state.filesystem_free_bytes,
        "hits": state.hits,
        "queue_oldest_timestamp": state.queue_oldest_timestamp,
        "computed_at": state.computed_at,
    }
