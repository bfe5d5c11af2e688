"""The cache at a glance: counts and bytes per state, for ``status``."""

from __future__ import annotations

from typing import Any

from .driver import Driver
from .maintenance import take_snapshot


def compute_status(driver: Driver, max_size: int) -> dict[str, Any]:
    """The ``status --json`` document (DESIGN section 4 keys, plus a few more)."""
    snapshot = take_snapshot(driver)
    return {
        "cache_dir": driver.base_dir,
        "size_bytes": snapshot.size_bytes,
        "max_size_bytes": max_size,
        "cached_images": len(snapshot.base.images),
        "queued_images": len(driver.scan_state("queue")),
        "incomplete_files": len(driver.scan_state("incomplete")),
        "invalid_files": len(driver.scan_state("invalid")),
        "orphan_files": len(snapshot.orphans()),
        "phantom_rows": len(snapshot.phantoms()),
        "untracked_bytes": snapshot.untracked_bytes(),
        "filesystem_free_bytes": snapshot.filesystem.free_bytes,
    }
