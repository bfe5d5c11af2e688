"""A cache with one of everything the metrics count, built through the real driver."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from glance_cache_agent.driver import Driver
from tests.helpers.cache import cache_image, set_row, write_file

T0 = 1_900_000_000.0
MAX_SIZE = 50_000


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


# Tracked images: id -> (size, hits, last_accessed). Two share the most hits.
TRACKED = {
    uid(1): (1000, 5, T0 - 500),
    uid(2): (2000, 9, T0 - 400),
    uid(3): (3000, 9, T0 - 300),
    uid(4): (4000, 0, T0 - 200),
}
ORPHAN, PHANTOM = uid(10), uid(11)
QUEUED = {uid(20): T0 - 100, uid(21): T0 - 50}


@dataclass(frozen=True)
class Expected:
    """The cache as the test built it (independent of the code under test)."""

    size_bytes: int = 1000 + 2000 + 3000 + 4000 + 500
    cached: int = 5
    incomplete: int = 1
    invalid: int = 2
    queued: int = 2
    queue_oldest: float = T0 - 100
    orphans: int = 1
    phantoms: int = 1
    untracked: int = 500
    hits: int = 5 + 9 + 9 + 0 + 7


def populate_cache(driver: Driver) -> Expected:
    """Images, an orphan, a phantom row, queue/incomplete/invalid entries, and
    files that are not images (lock files) which no metric may count."""
    for image_id, (size, hits, accessed) in TRACKED.items():
        cache_image(driver, image_id, size)
        set_row(driver, image_id, hits=hits, last_accessed=accessed)
    cache_image(driver, PHANTOM, 700)
    set_row(driver, PHANTOM, hits=7)
    os.unlink(driver.get_image_filepath(PHANTOM))
    base = Path(driver.base_dir)
    write_file(base / ORPHAN, 500)
    write_file(base / "glance-cache-prune", 0)  # an oslo lock file
    write_file(base / "incomplete" / uid(30), 300)
    write_file(base / "invalid" / uid(31), 100)
    write_file(base / "invalid" / uid(32), 100)
    for image_id, queued_at in QUEUED.items():
        driver.queue_image(image_id)
        os.utime(driver.get_image_filepath(image_id, "queue"), (queued_at, queued_at))
    return Expected()
