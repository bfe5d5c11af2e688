"""Metrics: the cache-state collector and the agent's own instrumentation.

Issue 3 section 4 and DESIGN section 4 (fixed metric names). A real cache
directory is built with the driver; the registry is served by the real
endpoint and scraped over HTTP, and every cache-state metric is compared
with what the driver itself reports.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from glance_cache_agent import __version__
from glance_cache_agent.config import TASK_NAMES, MetricsConfig
from glance_cache_agent.driver import Driver
from glance_cache_agent.exporter.endpoint import MetricsServer
from glance_cache_agent.exporter.metrics import (
    REMOVAL_REASONS,
    AgentMetrics,
    CacheState,
    CacheStateCollector,
    ImageStat,
    build_registry,
    compute_cache_state,
)
from glance_cache_agent.maintenance import (
    CleanResult,
    PrunePolicy,
    PruneResult,
    ReconcileResult,
    run_prune,
    take_snapshot,
)
from tests.helpers.cache import cache_image, read_image, set_row
from tests.helpers.populated_cache import (
    MAX_SIZE,
    ORPHAN,
    PHANTOM,
    T0,
    populate_cache,
    uid,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples keyed by (name, sorted labels), and each family's type."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())[0]


@pytest.fixture
def agent() -> AgentMetrics:
    return AgentMetrics(TASK_NAMES)


def spawn_nothing(_target: Callable[[], None]) -> None:
    """A spawn hook for tests that must never start a background refresh."""
    raise AssertionError("unexpected background refresh")


class ProbedCollector(CacheStateCollector):
    """The real collector on ``driver``, counting its computations and
    calling ``after`` once each computation has read the cache."""

    def __init__(
        self,
        driver: Driver,
        state_max_age: float = 30.0,
        spawn: Callable[[Callable[[], None]], None] | None = spawn_nothing,
        after: Callable[[], None] = lambda: None,
    ) -> None:
        """``spawn=None``: the real background thread."""
        config = MetricsConfig(per_image_limit=2, state_max_age=state_max_age)
        if spawn is None:
            super().__init__(lambda: driver, MAX_SIZE, config)
        else:
            super().__init__(lambda: driver, MAX_SIZE, config, spawn=spawn)
        self.computed = 0
        self.after = after

    def compute(self) -> CacheState:
        state = super().compute()
        self.computed += 1
        self.after()
        return state


# ------------------------------------------------------------- cache state


def test_cache_state_equals_the_drivers_view(driver: Driver) -> None:
    expected = populate_cache(driver)
    state = compute_cache_state(driver, MAX_SIZE, per_image_limit=2, now=T0)
    snapshot = take_snapshot(driver)
    queue = driver.scan_state("queue")

    assert state.computed_at == T0
    assert state.size_bytes == driver.get_cache_size() == expected.size_bytes
    assert state.max_size_bytes == MAX_SIZE
    assert state.cached_images == expected.cached
    assert state.cached_images == len(snapshot.tracked()) + len(snapshot.orphans())
    assert state.incomplete_images == len(driver.scan_state("incomplete")) == expected.incomplete
    assert state.invalid_images == len(driver.scan_state("invalid")) == expected.invalid
    assert state.queued_images == len(driver.get_queued_images()) == expected.queued
    assert state.queue_oldest_timestamp == min(i.mtime for i in queue) == expected.queue_oldest
    assert [i.name for i in snapshot.orphans()] == [ORPHAN]
    assert state.orphan_files == expected.orphans
    assert snapshot.phantoms() == [PHANTOM]
    assert state.phantom_rows == expected.phantoms
    assert state.untracked_bytes == snapshot.untracked_bytes() == expected.untracked
    assert state.hits == driver.store.total_hits() == expected.hits
    st = os.statvfs(driver.base_dir)
    assert state.filesystem_free_bytes == pytest.approx(st.f_bavail * st.f_frsize, rel=0.05)
    # top by hits, ties by id; the rest counted as omitted
    assert [(i.image_id, i.hits, i.size_bytes) for i in state.top_images] == [
        (uid(2), 9, 2000),
        (uid(3), 9, 3000),
    ]
    assert state.images_omitted == 2


def test_per_image_limit_zero_and_above_the_image_count(driver: Driver) -> None:
    populate_cache(driver)
    none = compute_cache_state(driver, MAX_SIZE, per_image_limit=0)
    assert none.top_images == () and none.images_omitted == 4
    every = compute_cache_state(driver, MAX_SIZE, per_image_limit=100)
    assert [i.image_id for i in every.top_images] == [uid(2), uid(3), uid(1), uid(4)]
    assert every.images_omitted == 0


def test_empty_cache_has_no_queue_timestamp(driver: Driver) -> None:
    state = compute_cache_state(driver, MAX_SIZE, per_image_limit=50)
    assert state.queue_oldest_timestamp is None
    assert (state.size_bytes, state.cached_images, state.hits) == (0, 0, 0)


# ----------------------------------------------------- exposition over HTTP


def test_scrape_over_http_matches_the_driver(driver: Driver, agent: AgentMetrics) -> None:
    expected = populate_cache(driver)
    config = MetricsConfig(port=0, per_image_limit=2)
    collector = CacheStateCollector(lambda: driver, MAX_SIZE, config)
    registry = build_registry(agent, collector)
    assert collector.refresh() is not None
    with (
        MetricsServer(config, registry, lambda: (True, {})) as server,
        urllib.request.urlopen(server.url + "/metrics", timeout=5) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples, types = parse(response.read().decode())

    def v(name: str, **labels: str) -> float:
        return value(samples, f"glance_cache_{name}", **labels)

    assert v("scrape_success") == 1
    assert v("size_bytes") == driver.get_cache_size() == expected.size_bytes
    assert v("max_size_bytes") == MAX_SIZE
    assert v("images", state="cached") == expected.cached
    assert v("images", state="incomplete") == len(driver.scan_state("incomplete"))
    assert v("images", state="invalid") == len(driver.scan_state("invalid"))
    assert v("queued_images") == len(driver.get_queued_images())
    assert v("queue_oldest_timestamp_seconds") == expected.queue_oldest
    assert v("orphan_files") == expected.orphans
    assert v("phantom_rows") == expected.phantoms
    assert v("untracked_bytes") == expected.untracked
    assert v("filesystem_free_bytes") > 0
    assert driver.store.total_hits() == expected.hits
    assert v("hits_total") == 0  # counts from the agent's start, not the rows' history
    assert v("image_hits_total", image_id=uid(2)) == driver.get_hit_count(uid(2)) == 9
    assert v("image_hits_total", image_id=uid(3)) == 9
    assert v("image_size_bytes", image_id=uid(2)) == driver.get_image_size(uid(2))
    assert v("image_size_bytes", image_id=uid(3)) == 3000
    per_image = {k for k in samples if k[0].startswith("glance_cache_image_")}
    assert len(per_image) == 4  # 2 images x (hits, size): the cap holds
    assert v("images_omitted") == 2
    assert v("state_timestamp_seconds") > 0
    assert v("build_info", version=__version__) == 1
    assert types["glance_cache_hits"] == "counter"
    assert types["glance_cache_image_hits"] == "counter"
    assert types["glance_cache_size_bytes"] == "gauge"
    assert not [n for n in names(samples) if n.endswith("_created")]
    assert "process_resident_memory_bytes" in names(samples)


def test_per_image_series_off(driver: Driver, agent: AgentMetrics) -> None:
    populate_cache(driver)
    config = MetricsConfig(per_image=False, per_image_limit=50)
    collector = CacheStateCollector(lambda: driver, lambda: MAX_SIZE, config)
    collector.refresh()
    samples = scrape(build_registry(agent, collector, process=False))
    assert not [n for n in names(samples) if n.startswith("glance_cache_image_")]
    assert value(samples, "glance_cache_images_omitted") == 4


# ------------------------------------------------------------ hits_total


def hits_total(registry: CollectorRegistry) -> float:
    return value(scrape(registry), "glance_cache_hits_total")


def test_hits_total_counts_from_start_and_never_drops_across_evictions(
    driver: Driver, agent: AgentMetrics
) -> None:
    populate_cache(driver)
    collector = ProbedCollector(driver)
    registry = build_registry(agent, collector, process=False)
    collector.refresh()
    assert hits_total(registry) == 0  # the 30 hits in the rows happened before the start

    set_row(driver, uid(1), hits=8)  # three hits (last_accessed kept: still the LRU)
    collector.refresh()
    assert hits_total(registry) == 3

    # a real prune evicts the least recently accessed image (uid 1, 8 hits)
    policy = PrunePolicy(max_size=driver.get_cache_size() - 1000, batch_pause=0)
    result = run_prune(driver, policy, lock_timeout=5)
    assert result.images == [uid(1)] and result.hits_evicted == 8
    collector.refresh()
    assert hits_total(registry) == 3

    read_image(driver, uid(4))
    collector.refresh()
    assert hits_total(registry) == 4

    # removed behind the agent's back, then cached again and read twice
    driver.delete_cached_image(uid(3))
    collector.refresh()
    assert hits_total(registry) == 4
    cache_image(driver, uid(3), 3000)
    read_image(driver, uid(3))
    read_image(driver, uid(3))
    collector.refresh()
    assert hits_total(registry) == 6


# ------------------------------------------------ staleness and refreshing


class Spawner:
    """Stands in for the background thread: runs the refresh when told."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, target: Callable[[], None]) -> None:
        self.pending.append(target)

    def run(self) -> None:
        self.pending.pop()()
        assert not self.pending


@pytest.fixture
def frozen() -> Iterator[object]:
    """A frozen clock. Not ``ignore=["_pytest"]``: freezegun would then hand
    real time to calls made a few frames below pytest's (Spawner.run)."""
    with freeze_time(datetime.fromtimestamp(T0, tz=UTC)) as clock:
        yield clock


def test_collect_never_computes_and_refreshes_once_when_stale(
    driver: Driver, agent: AgentMetrics, frozen: object
) -> None:
    populate_cache(driver)
    spawner = Spawner()
    collector = ProbedCollector(driver, state_max_age=30, spawn=spawner)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    assert collector.computed == 0  # registration computes nothing

    samples = scrape(registry)  # no state yet: success 0, one refresh started
    assert names(samples) == {"glance_cache_scrape_success"}
    assert value(samples, "glance_cache_scrape_success") == 0
    scrape(registry)
    assert len(spawner.pending) == 1 and collector.computed == 0  # never two at once

    spawner.run()
    assert collector.computed == 1
    assert value(scrape(registry), "glance_cache_size_bytes") == 10500
    assert not spawner.pending

    cache_image(driver, uid(40), 5000)
    frozen.tick(29.9)  # type: ignore[attr-defined]
    assert value(scrape(registry), "glance_cache_size_bytes") == 10500
    assert not spawner.pending

    frozen.tick(0.1)  # type: ignore[attr-defined]
    samples = scrape(registry)  # stale: the old state is served, one refresh starts
    assert value(samples, "glance_cache_size_bytes") == 10500
    assert value(samples, "glance_cache_state_timestamp_seconds") == T0
    assert len(spawner.pending) == 1
    scrape(registry)
    assert len(spawner.pending) == 1

    spawner.run()
    samples = scrape(registry)
    assert value(samples, "glance_cache_size_bytes") == 15500
    assert value(samples, "glance_cache_state_timestamp_seconds") == T0 + 30
    assert collector.computed == 2 and not spawner.pending

    frozen.move_to(datetime.fromtimestamp(T0, tz=UTC))  # type: ignore[attr-defined]
    scrape(registry)  # the clock went backwards: treated as stale
    assert len(spawner.pending) == 1


def test_collect_serves_the_held_state_without_touching_the_cache(
    driver: Driver, agent: AgentMetrics, tmp_path: Path
) -> None:
    populate_cache(driver)
    spawner = Spawner()
    collector = ProbedCollector(driver, state_max_age=3600, spawn=spawner)
    collector.refresh()
    os.rename(driver.base_dir, tmp_path / "moved")
    samples = scrape(build_registry(agent, collector, process=False))
    assert value(samples, "glance_cache_size_bytes") == 10500
    assert not spawner.pending


def test_mark_stale_refreshes_at_the_next_scrape_with_the_current_max_size(
    driver: Driver, agent: AgentMetrics
) -> None:
    populate_cache(driver)
    spawner = Spawner()
    max_size = [MAX_SIZE]
    config = MetricsConfig(state_max_age=3600)
    collector = CacheStateCollector(lambda: driver, lambda: max_size[0], config, spawn=spawner)
    registry = build_registry(agent, collector, process=False)
    collector.refresh()
    scrape(registry)
    assert not spawner.pending

    max_size[0] = 2 * MAX_SIZE  # e.g. a config reload
    collector.mark_stale()  # e.g. a task finished
    assert value(scrape(registry), "glance_cache_max_size_bytes") == MAX_SIZE
    scrape(registry)
    spawner.run()
    assert value(scrape(registry), "glance_cache_max_size_bytes") == 2 * MAX_SIZE
    assert not spawner.pending


@pytest.mark.parametrize("breakage", ["database_missing", "cache_dir_missing", "corrupt"])
def test_failed_refresh_exports_scrape_success_0_and_no_state(
    driver: Driver, agent: AgentMetrics, tmp_path: Path, breakage: str
) -> None:
    populate_cache(driver)
    collector = ProbedCollector(driver)
    registry = build_registry(agent, collector, process=False)
    collector.refresh()
    assert value(scrape(registry), "glance_cache_scrape_success") == 1
    if breakage == "database_missing":
        os.unlink(driver.db_path)
    elif breakage == "corrupt":
        Path(driver.db_path).write_bytes(b"this is not a database" * 100)
    else:
        os.rename(driver.base_dir, tmp_path / "moved")

    assert collector.refresh() is None
    assert collector.state is None
    samples = scrape(registry)
    assert value(samples, "glance_cache_scrape_success") == 0
    assert value(samples, "glance_cache_state_timestamp_seconds") > 0
    assert "glance_cache_size_bytes" not in names(samples)
    assert "glance_cache_hits_total" not in names(samples)
    assert value(samples, "glance_cache_task_runs_total", task="prune") == 0  # agent series stay


def test_background_refresh_runs_in_a_thread(driver: Driver, agent: AgentMetrics) -> None:
    populate_cache(driver)
    done = threading.Event()
    collector = ProbedCollector(driver, spawn=None, after=done.set)
    list(collector.collect())
    assert done.wait(5)
    for _ in range(100):  # the thread clears its flag right after storing the state
        if collector.state is not None:
            break
        threading.Event().wait(0.01)
    assert collector.state is not None and collector.state.size_bytes == 10500


# ----------------------------------------------------------- agent metrics


def test_task_series_exist_from_start_up(agent: AgentMetrics) -> None:
    registry = CollectorRegistry()
    registry.register(agent)
    samples = scrape(registry)
    for task in TASK_NAMES:
        for name in (
            "glance_cache_task_runs_total",
            "glance_cache_task_failures_total",
            "glance_cache_task_missed_total",
            "glance_cache_task_duration_seconds",
            "glance_cache_task_last_success_timestamp_seconds",
        ):
            assert value(samples, name, task=task) == 0, (name, task)
    for reason in REMOVAL_REASONS:
        assert value(samples, "glance_cache_removed_files_total", reason=reason) == 0
    assert value(samples, "glance_cache_pruned_images_total") == 0
    assert value(samples, "glance_cache_pruned_bytes_total") == 0
    assert value(samples, "glance_cache_build_info", version=__version__) == 1
    assert not [n for n in names(samples) if n.endswith("_created")]
    assert not [labels for _, labels in samples if "job" in dict(labels)]


def test_observe_task_counts_runs_failures_and_removals(
    agent: AgentMetrics, frozen: object
) -> None:
    registry = CollectorRegistry()
    registry.register(agent)
    agent.observe_task("clean", "scheduled", 1.5, CleanResult(False, 2, 1, bytes_freed=30))
    agent.observe_task(
        "prune",
        "scheduled",
        2.5,
        PruneResult(False, pruned_images=3, pruned_bytes=300, hits_evicted=12),
    )
    agent.observe_task("reconcile", "adhoc", 0.5, ReconcileResult(False, orphans_removed=4))
    dry = PruneResult(True, pruned_images=9, pruned_bytes=900, hits_evicted=99)
    agent.observe_task("prune", "adhoc", 0.25, dry)
    samples = scrape(registry)

    assert value(samples, "glance_cache_task_runs_total", task="prune") == 2
    assert value(samples, "glance_cache_task_runs_total", task="clean") == 1
    assert value(samples, "glance_cache_task_duration_seconds", task="prune") == 0.25
    assert value(samples, "glance_cache_task_last_success_timestamp_seconds", task="clean") == T0
    removed = {
        r: value(samples, "glance_cache_removed_files_total", reason=r) for r in REMOVAL_REASONS
    }
    assert removed == {"invalid": 2, "stalled": 1, "orphan": 4, "pruned": 3}
    assert value(samples, "glance_cache_pruned_images_total") == 3  # the dry run counts nothing
    assert value(samples, "glance_cache_pruned_bytes_total") == 300

    frozen.tick(60)  # type: ignore[attr-defined]
    agent.observe_task("clean", "scheduled", 4.0, OSError(5, "Input/output error"))
    samples = scrape(registry)
    assert value(samples, "glance_cache_task_failures_total", task="clean") == 1
    assert value(samples, "glance_cache_task_runs_total", task="clean") == 2
    assert value(samples, "glance_cache_task_duration_seconds", task="clean") == 4.0
    assert value(samples, "glance_cache_task_last_success_timestamp_seconds", task="clean") == T0

    agent.observe_missed("prune")
    assert value(scrape(registry), "glance_cache_task_missed_total", task="prune") == 1


def test_observe_task_is_thread_safe(agent: AgentMetrics) -> None:
    def work() -> None:
        for _ in range(200):
            agent.observe_task("prune", "scheduled", 0.0, PruneResult(False, hits_evicted=1))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry = CollectorRegistry()
    registry.register(agent)
    assert value(scrape(registry), "glance_cache_task_runs_total", task="prune") == 1600


def no_driver() -> Driver:
    raise AssertionError("no driver here")


def test_scrape_cost_does_not_depend_on_the_number_of_images() -> None:
    """collect() renders the held state, whose per-image part is capped: the
    samples of a scrape at 100k images are those at 1k (default cap, 50)."""

    def state(images: int) -> CacheState:
        top = tuple(ImageStat(uid(n), 1000 - n, 1) for n in range(50))
        zeros = dict.fromkeys(
            ("max_size_bytes", "incomplete_images", "invalid_images", "queued_images"), 0
        )
        return CacheState(
            computed_at=T0,
            duration=1.0,
            size_bytes=images,
            cached_images=images,
            queue_oldest_timestamp=None,
            orphan_files=0,
            phantom_rows=0,
            invalid_rows=0,
            untracked_bytes=0,
            foreign_files=0,
            foreign_names=(),
            filesystem_free_bytes=0,
            hits=images,
            top_images=top,
            images_omitted=images - 50,
            **zeros,
        )

    class Fixed(CacheStateCollector):
        def __init__(self, images: int) -> None:
            super().__init__(no_driver, MAX_SIZE, MetricsConfig(), spawn=spawn_nothing)
            self.images = images

        def compute(self) -> CacheState:
            return state(self.images)

    counts = []
    for images in (1_000, 100_000):
        collector = Fixed(images)
        collector.refresh()
        counts.append(sum(len(f.samples) for f in collector.collect()))
    assert counts[0] == counts[1] < 120


def test_a_run_with_file_errors_counts_its_removals_but_is_a_failure(agent: AgentMetrics) -> None:
    """What was removed was removed; what could not be handled makes the run fail."""
    registry = CollectorRegistry()
    registry.register(agent)
    result = CleanResult(dry_run=False, invalid_removed=2, errors=["/c/invalid/x: I/O error"])

    agent.observe_task("clean", "scheduled", 0.5, result)

    samples = scrape(registry)
    assert value(samples, "glance_cache_removed_files_total", reason="invalid") == 2
    assert value(samples, "glance_cache_task_failures_total", task="clean") == 1
    assert value(samples, "glance_cache_task_last_success_timestamp_seconds", task="clean") == 0


def test_task_interval_series_follow_the_schedule(agent: AgentMetrics) -> None:
    registry = CollectorRegistry()
    registry.register(agent)
    agent.set_intervals({"clean": 3660.0, "prune": 1860.0})
    samples = scrape(registry)
    assert value(samples, "glance_cache_task_interval_seconds", task="prune") == 1860.0
    agent.set_intervals({"clean": 3660.0})  # prune disabled by a reload
    samples = scrape(registry)
    assert ("glance_cache_task_interval_seconds", (("task", "prune"),)) not in samples
    assert value(samples, "glance_cache_task_interval_seconds", task="clean") == 3660.0
