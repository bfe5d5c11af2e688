"""``glance-cache-agent run``: the long-running service.

The main thread is the supervisor: it owns signals, sd_notify and reloads.
APScheduler's background thread runs the maintenance tasks through the same
``run_task`` as the CLI, the metrics endpoint serves from its own threads.

Start-up order: logging, metrics (first cache state computed), HTTP endpoint
bound, scheduler started, then READY=1. Shutdown (SIGTERM/SIGINT): stop
scheduling, let a running task reach a safe point (prune stops between
batches), STOPPING=1, close the endpoint, exit 0. SIGHUP: reload the config;
an invalid new config keeps the old one running and logs why.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from . import __version__
from .config import ConfigError, load_config
from .config_model import Config
from .http import MetricsServer, MetricsServerError
from .logging import configure_logging, get_logger
from .metrics import AgentMetrics, CacheStateCollector, build_registry
from .runner import TaskOutcome, open_driver, run_task, summary_fields
from .scheduler import TaskScheduler, expected_gap
from .systemd import Notifier

LOG = get_logger("glance_cache_agent.daemon")

#: Longest the supervisor sleeps between liveness checks and status updates.
TICK = 1.0


def run_problem(outcome: object) -> str | None:
    """Why a finished run counts as failed, or None when it succeeded.

    A run that raised failed; so did one that finished but could not remove
    some files (its result lists them): the CLI exits 1 for it, and the
    daemon reports it the same way, in ``/healthz`` and the failure counter.
    """
    if isinstance(outcome, BaseException):
        return f"{type(outcome).__name__}: {outcome}"
    errors = outcome.result.errors if isinstance(outcome, TaskOutcome) else []
    if errors:
        return f"{len(errors)} file operation(s) failed, first: {errors[0]}"
    return None


@dataclass
class Health:
    """What ``/healthz`` reports: the scheduler's liveness and each task's last run."""

    scheduler_alive: bool = False
    last_error: dict[str, str] = field(default_factory=dict)
    #: the scheduled tasks; None: all. A run of any other task is not recorded.
    tasks: frozenset[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, task: str, outcome: object) -> None:
        with self.lock:
            if self.tasks is not None and task not in self.tasks:
                return  # disabled by a reload while it ran
            problem = run_problem(outcome)
            if problem is not None:
                self.last_error[task] = problem
            else:
                self.last_error.pop(task, None)

    def set_tasks(self, tasks: list[str]) -> None:
        """Follow a reload: the failures of tasks no longer scheduled are dropped."""
        with self.lock:
            self.tasks = frozenset(tasks)
            for task in set(self.last_error) - self.tasks:
                del self.last_error[task]

    def report(self) -> tuple[bool, dict[str, Any]]:
        with self.lock:
            failing = dict(self.last_error)
        reasons = [f"task {task} failed its last run: {err}" for task, err in failing.items()]
        if not self.scheduler_alive:
            reasons.insert(0, "scheduler is not running")
        body: dict[str, Any] = {
            "status": "ok" if not reasons else "unhealthy",
            "scheduler_alive": self.scheduler_alive,
            "failing_tasks": sorted(failing),
        }
        if reasons:
            body["reasons"] = reasons
        return not reasons, body


def _enabled(config: Config) -> list[str]:
    return [name for name, schedule in config.tasks.items() if schedule.enabled]


class Agent:
    """The daemon's moving parts and the supervisor loop that drives them."""

    def __init__(self, config: Config, config_path: str | None, log_format: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.log_format = log_format
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.notifier = Notifier()
        tasks = _enabled(config)
        self.health = Health(tasks=frozenset(tasks))
        self.metrics = AgentMetrics(tasks=tasks, version=__version__)
        self.collector = CacheStateCollector(
            driver_factory=lambda: open_driver(self.config),
            max_size=lambda: self.config.cache.max_size,
            metrics_config=config.metrics,
        )
        self.registry = build_registry(self.metrics, self.collector)
        self.server = MetricsServer(config.metrics, self.registry, self.health.report)
        self.scheduler = TaskScheduler(
            config.tasks,
            run=self._run,
            on_result=self._on_result,
            first_run_delay=config.agent.first_run_delay,
            on_skipped=lambda task, _reason: self.metrics.observe_missed(task),
        )

    # -------------------------------------------------------------- tasks

    def _run(self, task: str) -> TaskOutcome:
        """Run one scheduled task; the scheduler calls this in its worker thread."""
        return run_task(
            self.config,
            task,
            trigger="scheduled",
            lock_wait=None,
            pause=self._pause,
            stop=self.stop_event.is_set,
        )

    def _pause(self, seconds: float) -> None:
        """Wait between batches, but wake at once on shutdown."""
        self.stop_event.wait(seconds)

    def _on_result(
        self, task: str, trigger: str, started_at: datetime, duration: float, outcome: object
    ) -> None:
        """Feed metrics and health and log one summary line (never blocks)."""
        self.health.record(task, outcome)
        self.collector.mark_stale()  # the next scrape measures what the run left behind
        if isinstance(outcome, BaseException):
            self.metrics.observe_task(task, trigger, duration, outcome)
            LOG.error(
                "task failed",
                task=task,
                trigger=trigger,
                duration_seconds=round(duration, 3),
                error=f"{type(outcome).__name__}: {outcome}",
                exc_info=outcome,
            )
            return
        assert isinstance(outcome, TaskOutcome)
        self.metrics.observe_task(task, trigger, duration, outcome.result)
        if outcome.result.errors:
            LOG.warning("task finished with errors", **summary_fields(outcome))
        else:
            LOG.info("task finished", **summary_fields(outcome))

    # ------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_event.set()
        else:
            self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # ------------------------------------------------------------- reload

    def reload(self) -> None:
        """Re-read the config; keep the running one when the new one is invalid."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            LOG.error("reload refused: the new configuration is invalid", error=str(exc))
            self.notifier.ready(status="reload refused: invalid configuration")
            return
        old = self.config
        enabled = _enabled(new)
        for name in enabled:  # a task enabled by the reload exports its series at once
            self.metrics.ensure_task(name)
        # before rescheduling, so that a newly enabled task's first run counts
        self.health.set_tasks(enabled)
        try:
            # before anything else changes: it changes nothing when a schedule cannot fire
            self.scheduler.reschedule(new.tasks)
        except ValueError as exc:
            self.health.set_tasks(_enabled(old))
            LOG.error("reload refused: the new schedule is invalid", error=str(exc))
            self.notifier.ready(status="reload refused: invalid schedule")
            return
        self.config = new
        self._publish_intervals()
        configure_logging(new.logging.level, self.log_format or new.logging.format, sys.stdout)
        if new.metrics != old.metrics:
            LOG.warning("metrics settings changed; they take effect at the next restart")
        self.collector.mark_stale()
        LOG.info("configuration reloaded", path=self.config_path)
        self.notifier.ready(status=self._status_text())

    # ---------------------------------------------------------- lifecycle

    def _status_text(self) -> str:
        return self.scheduler.status_text()

    def _publish_intervals(self) -> None:
        now = datetime.now(UTC)
        self.metrics.set_intervals(
            {name: expected_gap(s, now) for name, s in self.config.tasks.items() if s.enabled}
        )

    def serve(self) -> int:
        """Start everything, supervise until asked to stop, then stop cleanly."""
        self.collector.refresh()
        self.server.start()
        self.scheduler.start()
        self._publish_intervals()
        self.health.scheduler_alive = True
        LOG.info(
            "agent started",
            version=__version__,
            cache_dir=self.config.cache.dir,
            listen=self.server.address,
            tasks=sorted(t for t, s in self.config.tasks.items() if s.enabled),
        )
        self.notifier.ready(status=self._status_text())
        interval = self.notifier.watchdog_interval
        tick = min(TICK, interval) if interval else TICK
        last_status = 0.0
        while not self.stop_event.wait(tick):
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            alive = self.scheduler.is_alive()
            self.health.scheduler_alive = alive
            if alive:
                self.notifier.watchdog()
            if time.monotonic() - last_status >= 10:
                self.notifier.status(self._status_text())
                last_status = time.monotonic()
        LOG.info("stopping: waiting for a running task to reach a safe point")
        self.notifier.stopping()
        self.scheduler.shutdown(wait=True)
        self.health.scheduler_alive = False
        self.server.stop()
        LOG.info("agent stopped")
        return 0


def run_daemon(config: Config, config_path: str | None, log_format: str | None) -> int:
    """Entry point of ``glance-cache-agent run``."""
    configure_logging(config.logging.level, log_format or config.logging.format, sys.stdout)
    agent = Agent(config, config_path, log_format)
    agent.install_signal_handlers()
    try:
        return agent.serve()
    except (OSError, MetricsServerError) as exc:
        LOG.error("cannot start", error=str(exc))
        return 1
