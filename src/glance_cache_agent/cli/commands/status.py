"""``status``, ``list-cached`` and ``list-queued``: read-only views of the cache."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ...errors import ExitCode
from ..output import emit

if TYPE_CHECKING:
    from ...config import Config


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    """One summary of the cache (the same figures the exporter publishes)."""
    from ...exporter.cache_state import StoreInfo, compute_cache_state, status_document
    from ...service.runner import open_driver
    from ..render import render_status

    driver = open_driver(config)
    state = compute_cache_state(driver, config.cache.max_size, per_image_limit=0)
    store = StoreInfo.of(config.cache.driver, config.cache.node_url)
    emit(
        args,
        status_document(state, driver.base_dir, store),
        lambda: render_status(state, driver.base_dir, store),
    )
    return ExitCode.OK


def cmd_list_cached(args: argparse.Namespace, config: Config) -> int:
    """Cached images ordered by image id, with size, hits and ages."""
    from ...service.runner import open_driver
    from ..render import CachedEntry, render_cached

    entries = [
        CachedEntry(
            image_id=row["image_id"],
            size=int(row["size"]),
            hits=int(row["hits"]),
            last_accessed=row["last_accessed"],
            last_modified=row["last_modified"],
        )
        for row in open_driver(config).get_cached_images()
    ]
    now = time.time()
    emit(args, entries, lambda: render_cached(entries, now))
    return ExitCode.OK


def cmd_list_queued(args: argparse.Namespace, config: Config) -> int:
    """Queued image ids, oldest first."""
    from ...service.runner import open_driver

    queued = open_driver(config).get_queued_images()
    emit(args, queued, lambda: "\n".join(queued) if queued else "no queued images")
    return ExitCode.OK
