"""Prometheus metrics: the agent's own activity, and the registry serving both sources.

Two sources feed one registry (``build_registry``):

* ``collector.CacheStateCollector`` serves the cache-state families (sizes,
  image counts, orphans, hits...), computed in the background.
* ``AgentMetrics`` is direct instrumentation of the agent's tasks; the
  runner calls ``observe_task`` after every run, and the daemon folds in the
  runs other processes recorded (``observe_record``) at each scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..maintenance import CleanResult, PruneResult, ReconcileResult
from ..service.run_records import RunRecord
from .cache_state import SQLITE_STORE, CacheState, ImageStat, StoreInfo, compute_cache_state
from .collector import CacheStateCollector
from .evictions import EvictionMemory

#: ``removed_files_total{reason}`` label values, all exported from start-up.
REMOVAL_REASONS = ("invalid", "stalled", "orphan", "pruned")

TaskResult = CleanResult | PruneResult | ReconcileResult


class AgentMetrics(Collector):
    """The agent's own activity, instrumented directly (thread-safe).

    Every ``task_*`` series exists from construction for each task named,
    at 0 until that task's first run (``task_last_success_timestamp_seconds``
    too, as DESIGN section 4 fixes).
    """

    def __init__(
        self,
        tasks: Iterable[str],
        version: str = __version__,
        store: StoreInfo = SQLITE_STORE,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        #: called (outside the lock) before each scrape: folds in other processes' runs
        self.before_collect: Callable[[], None] | None = None
        self._last_success: dict[str, float] = {}
        self._interval_tasks: set[str] = set()
        self.runs = Counter("glance_cache_task_runs", "Task runs.", ["task"], registry=None)
        self.failures = Counter(
            "glance_cache_task_failures", "Task runs that failed.", ["task"], registry=None
        )
        self.missed = Counter(
            "glance_cache_task_missed",
            "Scheduled runs skipped (misfired, or the previous run still running).",
            ["task"],
            registry=None,
        )
        self.duration = Gauge(
            "glance_cache_task_duration_seconds",
            "Duration of the task's last run; 0 before its first.",
            ["task"],
            registry=None,
        )
        self.interval = Gauge(
            "glance_cache_task_interval_seconds",
            "Longest expected gap between two scheduled starts of the task (interval or"
            " widest cron gap, plus jitter); absent for tasks that are not scheduled.",
            ["task"],
            registry=None,
        )
        self.last_success = Gauge(
            "glance_cache_task_last_success_timestamp_seconds",
            "Unix time the task last succeeded; 0 before its first success.",
            ["task"],
            registry=None,
        )
        self.pruned_images = Counter(
            "glance_cache_pruned_images", "Images evicted by prune.", registry=None
        )
        self.pruned_bytes = Counter(
            "glance_cache_pruned_bytes", "Bytes evicted by prune.", registry=None
        )
        self._evictions = EvictionMemory()
        self.reevicted_images = Counter(
            "glance_cache_reevicted_images",
            "Images prune evicted that it had already evicted within the last 24 hours"
            " (cached again in between): eviction churn.",
            registry=None,
        )
        self.removed_files = Counter(
            "glance_cache_removed_files",
            "Files the agent removed, by reason (invalid, stalled, orphan, pruned).",
            ["reason"],
            registry=None,
        )
        self.uninspectable = Gauge(
            "glance_cache_uninspectable_processes",
            "Processes whose open files the daemon's last clean could not read (another"
            " user's, not dumpable or more privileged): a download held by one of them is not"
            " recognised as live. 0 when no incomplete file was old enough to check.",
            registry=None,
        )
        self.build = Info("glance_cache_build", "Agent build information.", registry=None)
        self.build.info({"version": version})
        self.store = Info(
            "glance_cache",
            "The cache's metadata store: driver (sqlite or centralized_db) and, with"
            " centralized_db, node_url (this node's node_reference_url).",
            registry=None,
        )
        self.set_store(store)
        for task in tasks:
            self.ensure_task(task)
        for reason in REMOVAL_REASONS:
            self.removed_files.labels(reason)

    def _metrics(self) -> tuple[Counter | Gauge | Info, ...]:
        return (
            self.runs,
            self.failures,
            self.missed,
            self.duration,
            self.interval,
            self.last_success,
            self.pruned_images,
            self.pruned_bytes,
            self.reevicted_images,
            self.removed_files,
            self.uninspectable,
            self.build,
            self.store,
        )

    def set_store(self, store: StoreInfo) -> None:
        """Publish which store the cache's rows are in (at start-up and after a reload)."""
        with self._lock:
            self.store.info(store.as_dict())

    def set_intervals(self, intervals: dict[str, float]) -> None:
        """Publish each scheduled task's expected gap; drop tasks no longer scheduled."""
        with self._lock:
            for task in self._interval_tasks - set(intervals):
                self.interval.remove(task)
            for task, seconds in intervals.items():
                self.interval.labels(task).set(seconds)
            self._interval_tasks = set(intervals)

    def ensure_task(self, task: str) -> None:
        """Create the task's series at 0 (idempotent)."""
        for metric in (self.runs, self.failures, self.missed, self.duration, self.last_success):
            metric.labels(task)

    def observe_task(
        self,
        task: str,
        trigger: str,
        duration: float,
        outcome: TaskResult | BaseException,
    ) -> None:
        """Record one finished run: its result, or the exception it raised.

        ``trigger`` (``scheduled`` or ``adhoc``) is not a label: DESIGN fixes
        ``task_runs_total{task}``. A dry run counts as a run, never as removals.
        """
        with self._lock:
            self.runs.labels(task).inc()
            self.duration.labels(task).set(duration)
            if isinstance(outcome, BaseException):
                self.failures.labels(task).inc()
                return
            if isinstance(outcome, CleanResult):
                self.uninspectable.set(outcome.uninspectable_processes)
            if not outcome.dry_run:
                self._count_removals(outcome)  # what was removed was removed
            if outcome.errors:
                # finished, but some files could not be handled: not a success
                self.failures.labels(task).inc()
                return
            self._succeeded(task, time.time())

    def _succeeded(self, task: str, when: float) -> None:
        """Move the task's last success to ``when``; never backwards (lock held)."""
        latest = max(self._last_success.get(task, 0.0), when)
        self._last_success[task] = latest
        self.last_success.labels(task).set(latest)

    def observe_record(self, record: RunRecord) -> None:
        """Count a run another process recorded (by hand, by a systemd timer).

        Only the ``task_*`` series: what the run removed is in its own log.
        """
        with self._lock:
            self.ensure_task(record.task)
            self.runs.labels(record.task).inc()
            self.duration.labels(record.task).set(record.duration)
            if record.ok:
                self._succeeded(record.task, record.finished_at)
            else:
                self.failures.labels(record.task).inc()

    def restore_task(self, task: str, last_success: float, duration: float) -> None:
        """At start-up: the task's last success and duration from before, no runs."""
        with self._lock:
            self.ensure_task(task)
            self.duration.labels(task).set(duration)
            if last_success > 0:
                self._succeeded(task, last_success)

    def _count_removals(self, outcome: TaskResult) -> None:
        removed = self.removed_files
        if isinstance(outcome, CleanResult):
            removed.labels("invalid").inc(outcome.invalid_removed)
            removed.labels("stalled").inc(outcome.stalled_removed)
        elif isinstance(outcome, PruneResult):
            removed.labels("pruned").inc(outcome.pruned_images)
            self.pruned_images.inc(outcome.pruned_images)
            self.pruned_bytes.inc(outcome.pruned_bytes)
            self.reevicted_images.inc(self._evictions.evicted(outcome.images, time.time()))
        else:
            removed.labels("orphan").inc(outcome.orphans_removed)

    def observe_missed(self, task: str) -> None:
        """A scheduled run did not happen (misfire, or max_instances reached)."""
        self.missed.labels(task).inc()

    def describe(self) -> Iterable[Metric]:
        return [family for metric in self._metrics() for family in metric.describe()]

    def collect(self) -> Iterable[Metric]:
        if self.before_collect is not None:
            self.before_collect()
        with self._lock:
            return [family for metric in self._metrics() for family in metric.collect()]


def build_registry(
    agent_metrics: AgentMetrics, collector: CacheStateCollector, process: bool = True
) -> CollectorRegistry:
    """A fresh registry (never the global one) serving both sources, plus
    ``process_*`` metrics (CPU, memory, open files) when ``process``.
    """
    registry = CollectorRegistry()
    registry.register(agent_metrics)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry


__all__ = [
    "REMOVAL_REASONS",
    "AgentMetrics",
    "CacheState",
    "CacheStateCollector",
    "ImageStat",
    "StoreInfo",
    "build_registry",
    "compute_cache_state",
]
