"""The cache-state families: served from the latest ``CacheState``, never computed on a scrape.

Computing the state scans the cache directory and reads every row, which
costs about a second at 100k images, so a scrape never computes: it serves
the latest ``CacheState`` and, when that is older than
``metrics.state_max_age``, starts one refresh in the background. A scrape's
cost therefore depends on ``per_image_limit``, not on the number of cached
images.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import MetricsConfig
from ..driver import CacheDriver
from ..log import get_logger
from ..service.runner import close_driver
from .cache_state import CacheState, compute_cache_state, hits_increase

__all__ = ["CacheStateCollector"]

LOG = get_logger(__name__)

Spawn = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class _Served:
    """What ``collect()`` serves: the last refresh attempt and its outcome."""

    attempted_at: float
    #: None when the attempt failed
    state: CacheState | None
    hits_total: int


def _start_daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="cache-state-refresh", daemon=True).start()


def _age_note(max_age: float) -> str:
    return f" Computed in the background; up to {max_age:g} s old."


class CacheStateCollector(Collector):
    """Serves the latest ``CacheState``; refreshes it in the background when stale.

    ``collect()`` never scans. When the state it holds is older than
    ``metrics_config.state_max_age`` (or the clock went backwards, or
    ``mark_stale()`` was called) it starts one refresh through ``spawn`` (a
    daemon thread by default; never two at once) and serves the old state
    meanwhile. Call ``refresh()`` once at start-up so the first scrape has data.

    Each refresh opens a driver with ``driver_factory`` and reads
    ``max_size`` (a callable follows config reloads); ``compute()`` is the
    one place that touches the cache.

    ``glance_cache_hits_total`` is a real counter: 0 at the first successful
    refresh, then it grows by the hits each refresh finds since the previous
    one (``hits_increase`` over the rows' per-image hits), so evictions by
    anyone (this daemon, an ad-hoc prune, Glance) and restarts never make it
    drop. The only per-image memory is the last refresh's ``image_hits``.
    """

    def __init__(
        self,
        driver_factory: Callable[[], CacheDriver],
        max_size: int | Callable[[], int],
        metrics_config: MetricsConfig,
        *,
        spawn: Spawn = _start_daemon_thread,
    ) -> None:
        self.driver_factory = driver_factory
        self.max_size = max_size
        self.per_image_limit = metrics_config.per_image_limit if metrics_config.per_image else 0
        self.state_max_age = metrics_config.state_max_age
        self._spawn = spawn
        self._lock = threading.Lock()  # guards the fields below; held only briefly
        self._refresh_lock = threading.Lock()  # one computation at a time
        self._served: _Served | None = None
        self._hits_total = 0
        #: per-image hits at the last successful refresh; None before it
        self._hits_seen: Mapping[str, int] | None = None
        self._refreshing = False
        self._marked_stale = False

    def compute(self) -> CacheState:
        """Measure the cache (the slow part; never called by ``collect()``)."""
        max_size = self.max_size() if callable(self.max_size) else self.max_size
        driver = self.driver_factory()
        try:
            return compute_cache_state(driver, max_size, self.per_image_limit)
        finally:
            close_driver(driver)

    @property
    def state(self) -> CacheState | None:
        """The state being served; None before the first success or after a failure."""
        with self._lock:
            return self._served.state if self._served else None

    def mark_stale(self) -> None:
        """Make the next scrape start a refresh (e.g. after a task changed the cache)."""
        with self._lock:
            self._marked_stale = True

    def refresh(self) -> CacheState | None:
        """Compute a new state now (blocking); return it, or None if it failed."""
        with self._refresh_lock:
            with self._lock:
                self._marked_stale = False
            attempted_at = time.time()
            try:
                state = self.compute()
            except Exception as exc:  # noqa: BLE001 - any failure is reported as scrape_success 0
                LOG.warning("cannot compute the cache state", error=str(exc), exc_info=True)
                with self._lock:
                    self._served = _Served(attempted_at, None, self._hits_total)
                return None
            with self._lock:
                self._hits_total += hits_increase(self._hits_seen, state.image_hits)
                self._hits_seen = state.image_hits
                self._served = _Served(attempted_at, state, self._hits_total)
            return state

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering the collector must not compute anything."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Serve the held state; start a background refresh if it is stale."""
        now = time.time()
        with self._lock:
            served = self._served
            stale = (
                served is None
                or self._marked_stale
                or not 0 <= now - served.attempted_at < self.state_max_age
            )
            start = stale and not self._refreshing
            if start:
                self._refreshing = True
        if start:
            try:
                self._spawn(self._refresh_in_background)
            except BaseException:
                with self._lock:
                    self._refreshing = False
                raise
        return list(self._families(served))

    def _refresh_in_background(self) -> None:
        try:
            self.refresh()
        finally:
            with self._lock:
                self._refreshing = False

    def _families(self, served: _Served | None) -> Iterator[Metric]:
        note = _age_note(self.state_max_age)
        ok = served is not None and served.state is not None
        yield GaugeMetricFamily(
            "glance_cache_scrape_success",
            "1 if the last cache-state refresh succeeded; 0 if it failed (database or cache"
            " directory missing or unreadable), and then the cache-state metrics are absent.",
            value=1 if ok else 0,
        )
        if served is None:
            return
        yield GaugeMetricFamily(
            "glance_cache_state_timestamp_seconds",
            "Unix time of the last cache-state refresh (successful or not).",
            value=served.attempted_at,
        )
        s = served.state
        if s is None:
            return
        yield GaugeMetricFamily(
            "glance_cache_state_refresh_duration_seconds",
            "Seconds the last successful cache-state refresh took.",
            value=s.duration,
        )
        yield from self._state_families(s, served.hits_total, note)

    @staticmethod
    def _state_families(s: CacheState, hits_total: int, note: str) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"glance_cache_{name}", doc + note, value=value)

        yield gauge(
            "size_bytes", "Bytes of image files in the cache (as Glance counts).", s.size_bytes
        )
        yield gauge("max_size_bytes", "Configured image_cache_max_size in bytes.", s.max_size_bytes)
        images = GaugeMetricFamily(
            "glance_cache_images", "Image files in the cache by state." + note, labels=["state"]
        )
        images.add_metric(["cached"], s.cached_images)
        images.add_metric(["incomplete"], s.incomplete_images)
        images.add_metric(["invalid"], s.invalid_images)
        yield images
        yield gauge("queued_images", "Images queued for caching.", s.queued_images)
        if s.queue_oldest_timestamp is not None:
            yield gauge(
                "queue_oldest_timestamp_seconds",
                "Unix time the oldest queue entry was queued; absent when the queue is empty.",
                s.queue_oldest_timestamp,
            )
        yield gauge("orphan_files", "Image files without a database row.", s.orphan_files)
        yield gauge("phantom_rows", "Database rows without an image file.", s.phantom_rows)
        if s.dead_images is not None and s.dead_bytes is not None:
            yield gauge(
                "dead_images",
                "Cached images Glance deleted (centralized_db, SELECT on images): prune"
                " evicts them first.",
                s.dead_images,
            )
            yield gauge("dead_bytes", "Bytes of the cached images Glance deleted.", s.dead_bytes)
        yield gauge(
            "untracked_bytes",
            "Bytes no row accounts for: image files without a row, and foreign files.",
            s.untracked_bytes,
        )
        yield gauge(
            "filesystem_free_bytes",
            "Bytes available to unprivileged users on the cache's filesystem.",
            s.filesystem_free_bytes,
        )
        yield CounterMetricFamily(
            "glance_cache_hits",
            "Cache hits since the agent started (0 at start; evictions never lower it)." + note,
            value=hits_total,
        )
        yield gauge(
            "images_omitted",
            "Cached images without per-image series (beyond metrics.per_image_limit).",
            s.images_omitted,
        )
        if not s.top_images:
            return
        hits = CounterMetricFamily(
            "glance_cache_image_hits",
            "Cache hits of the images with the most hits (metrics.per_image_limit)." + note,
            labels=["image_id"],
        )
        sizes = GaugeMetricFamily(
            "glance_cache_image_size_bytes",
            "File size of the images with the most hits (metrics.per_image_limit)." + note,
            labels=["image_id"],
        )
        for image in s.top_images:
            hits.add_metric([image.image_id], image.hits)
            sizes.add_metric([image.image_id], image.size_bytes)
        yield hits
        yield sizes
