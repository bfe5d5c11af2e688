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

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..config.cron import expected_gap
from ..exporter.cache_state import StoreInfo
from ..exporter.collector import CacheStateCollector
from ..exporter.endpoint import MetricsServer, MetricsServerError
from ..exporter.metrics import AgentMetrics, build_registry
from ..log import get_logger
from .clockwatch import ClockWatch
from .logs import configure_logging
from .run_records import RunLedger, RunRecord
from .runner import TaskOutcome, open_driver, run_problem, run_task, summary_fields
from .scheduler import TaskScheduler
from .systemd import Notifier

LOG = get_logger("glance_cache_agent.daemon")

#: Longest the supervisor sleeps between liveness checks and status updates.
TICK = 1.0


@dataclass
class Health:
    """What ``/healthz`` reports: the scheduler's liveness and each task's last run."""

    scheduler_alive: bool = False
    last_error: dict[str, str] = field(default_factory=dict)
    #: tasks running longer than ``agent.max_task_runtime``: seconds run so far
    overdue: dict[str, float] = field(default_factory=dict)
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
        reasons += [
            f"task {task} has run for {int(secs)} s, longer than agent.max_task_runtime"
            for task, secs in sorted(self.overdue.items())
        ]
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


def _store(config: Config) -> StoreInfo:
    return StoreInfo.of(config.cache.driver, config.cache.node_url)


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
        self.clock = ClockWatch()
        #: overdue tasks already logged (once per overrun, not once per tick)
        self._overdue_logged: set[str] = set()
        tasks = _enabled(config)
        self.health = Health(tasks=frozenset(tasks))
        self.metrics = AgentMetrics(tasks=tasks, version=__version__, store=_store(config))
        self.collector = CacheStateCollector(
            driver_factory=lambda: open_driver(self.config),
            max_size=lambda: self.config.cache.max_size,
            metrics_config=config.metrics,
        )
        self.runs = RunLedger(config.agent.runtime_dir)
        self.metrics.before_collect = self._fold_runs
        self._fold_error: str | None = None
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
            record=self.runs.record,
            clock_steps=self.clock.steps(),
        )

    def _restore_runs(self) -> None:
        """Start from the runs file: past runs are not counted again, but each
        task's last success and duration carry over a restart."""
        try:
            journal = self.runs.start()
        except OSError as exc:
            LOG.warning("cannot read the task-runs file", error=str(exc))
            return
        for task in sorted({*journal.last_success, *journal.last_duration}):
            self.metrics.restore_task(
                task, journal.last_success.get(task, 0.0), journal.last_duration.get(task, 0.0)
            )

    def _fold_runs(self) -> None:
        """Count the runs other processes recorded since the last scrape."""
        try:
            records = self.runs.fold()
        except OSError as exc:
            if str(exc) != self._fold_error:  # once per distinct problem, not per scrape
                LOG.warning("cannot read the task-runs file", error=str(exc))
            self._fold_error = str(exc)
            return
        self._fold_error = None
        for record in records:
            self.metrics.observe_record(record)
            self._log_record(record)

    @staticmethod
    def _log_record(record: RunRecord) -> None:
        fields = {"task": record.task, "pid": record.pid, "duration_seconds": record.duration}
        if record.ok:
            LOG.info("task run by another process finished", **fields)
        else:
            LOG.warning("task run by another process failed", error=record.error, **fields)

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
        self.metrics.set_store(_store(new))
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

    def _watch_clock(self) -> None:
        """Log a wall-clock step; a forward one is left out of idle ageing."""
        step = self.clock.observe()
        if step > 0:
            LOG.warning(
                "wall clock stepped forward; prune does not count it as idle time",
                seconds=round(step, 1),
            )
        elif step < 0:
            LOG.warning("wall clock stepped backward", seconds=round(-step, 1))

    def _check_liveness(self) -> None:
        """Send ``WATCHDOG=1`` only while the scheduler runs and no task has run
        longer than ``agent.max_task_runtime`` (monotonic clock): a hung task
        then gets the agent restarted by systemd's ``WatchdogSec=``."""
        alive = self.scheduler.is_alive()
        limit = self.config.agent.max_task_runtime
        overdue = self.scheduler.overdue_tasks(limit)
        self.health.scheduler_alive = alive
        self.health.overdue = overdue
        self._overdue_logged &= overdue.keys()  # a finished run may overrun again later
        for task in sorted(overdue.keys() - self._overdue_logged):
            self._overdue_logged.add(task)
            LOG.error(
                "task overran agent.max_task_runtime; withholding WATCHDOG=1 so systemd"
                " restarts the agent",
                task=task,
                running_seconds=round(overdue[task], 1),
                max_task_runtime=limit,
            )
        if alive and not overdue:
            self.notifier.watchdog()
        elif overdue:
            hung = ", ".join(f"{task} {int(secs)} s" for task, secs in sorted(overdue.items()))
            self.notifier.status(f"watchdog withheld: task overran max_task_runtime: {hung}")

    def _publish_intervals(self) -> None:
        now = datetime.now(UTC)
        self.metrics.set_intervals(
            {name: expected_gap(s, now) for name, s in self.config.tasks.items() if s.enabled}
        )

    def serve(self) -> int:
        """Start everything, supervise until asked to stop, then stop cleanly."""
        self._restore_runs()
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
            self._watch_clock()
            self._check_liveness()
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
