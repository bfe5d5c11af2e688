"""When maintenance tasks run: a small adapter over APScheduler 3.x.

``TaskScheduler`` owns one ``BackgroundScheduler`` (UTC) with one job per
enabled task (job id = task name). The job body, ``TaskScheduler.execute``,
wraps the runner: it measures the run, catches what the runner raises and
returns a ``RunRecord``; one listener hands each record to the daemon's
``on_result`` hook (metrics and one summary line). Keeping APScheduler behind
this module keeps a later move to APScheduler 4 local.

Job defaults, and why:

* ``coalesce=True``: after a stall, run once, not once per missed slot.
* ``max_instances=1``: a task never overlaps itself; a slot that arrives
  while the previous run is still going is skipped (and logged as a warning).
* ``misfire_grace_time=None``: no limit. APScheduler's default of 1 s
  silently drops a run that starts a little late (busy thread pool, GC, a
  suspended VM, a clock step). For maintenance, a late run is always better
  than a skipped one, and ``coalesce`` bounds the catch-up to one run. The
  job store is in memory, so there is no backlog from before a restart.

When each task fires (interval or cron, and the cron translation) is
``triggers``' business.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from structlog.contextvars import bound_contextvars

from ..config import TaskSchedule
from ..config.cron import build_trigger
from ..log import get_logger

__all__ = [
    "JOB_DEFAULTS",
    "ResultHook",
    "RunRecord",
    "SkipHook",
    "TaskScheduler",
]

_log = get_logger(__name__)

#: see the module docstring for why
JOB_DEFAULTS: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

_LISTENED = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES

#: on_result(task, trigger, started_at, duration, outcome); outcome is run()'s
#: return value, or the exception it raised (traceback attached)
ResultHook = Callable[[str, str, datetime, float, object], None]
#: on_skipped(task, reason); reason is "missed" or "max_instances"
SkipHook = Callable[[str, str], None]



def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a task: what the job body returns to the listener."""

    task: str
    #: "scheduled" for runs of the scheduler, "adhoc" for ``execute(..., "adhoc")``
    trigger: str
    started_at: datetime
    #: seconds, measured with the monotonic clock
    duration: float
    #: run()'s return value, or the exception it raised
    outcome: object

    @property
    def failed(self) -> bool:
        return isinstance(self.outcome, BaseException)


def _next_run_after_change(
    trigger: BaseTrigger,
    now: datetime,
    last_started: datetime | None,
    pending: datetime | None,
) -> datetime:
    """When a task whose schedule changed on reload runs next.

    Counted from its last run when there was one (shortening an interval can
    make it due at once); otherwise from now, but never later than a first
    run that is already pending. Never in the past.
    """
    fire: datetime | None = trigger.get_next_fire_time(last_started, now)
    if fire is None:  # a trigger that never fires again; treat as "now"
        fire = now
    fire = max(fire, now)
    if last_started is None and pending is not None:
        fire = min(fire, max(pending, now))
    return fire


# --- the scheduler -------------------------------------------------------------


class TaskScheduler:
    """Runs ``run(task_name)`` on each enabled task's schedule, in background threads.

    ``on_result`` is called once per finished run, from the worker thread
    that ran it, right after the run: it must be quick and thread-safe
    (update metrics, log one line). ``on_skipped`` (optional) is called when
    a slot was skipped because the previous run was still going.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskSchedule],
        run: Callable[[str], object],
        on_result: ResultHook,
        *,
        first_run_delay: float = 5.0,
        on_skipped: SkipHook | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        triggers = {name: build_trigger(s) for name, s in tasks.items() if s.enabled}
        self._tasks: dict[str, TaskSchedule] = dict(tasks)
        self._run = run
        self._on_result = on_result
        self._on_skipped = on_skipped
        self._first_run_delay = timedelta(seconds=first_run_delay)
        self._cond = threading.Condition()
        self._running: dict[str, datetime] = {}
        #: when each running task started, on the monotonic clock (immune to clock steps)
        self._running_since: dict[str, float] = {}
        self._monotonic = monotonic
        self._last_started: dict[str, datetime] = {}
        self._scheduler = BackgroundScheduler(timezone=UTC, job_defaults=dict(JOB_DEFAULTS))
        self._scheduler.add_listener(self.handle_event, _LISTENED)
        first_run = _utcnow() + self._first_run_delay
        for name, trigger in triggers.items():
            self._add_job(name, trigger, first_run)

    def _add_job(self, name: str, trigger: BaseTrigger, next_run_time: datetime) -> None:
        self._scheduler.add_job(
            self.execute,
            trigger=trigger,
            args=(name,),
            id=name,
            name=name,
            next_run_time=next_run_time,
            replace_existing=True,
        )

    # -- lifecycle --

    def start(self) -> None:
        """Start the scheduler thread; every enabled task first runs
        ``first_run_delay`` seconds from now, then on its schedule."""
        first_run = _utcnow() + self._first_run_delay
        for job in self._scheduler.get_jobs():
            self._scheduler.modify_job(job.id, next_run_time=first_run)
        self._scheduler.start()
        enabled = sorted(name for name, when in self.next_run_times().items() if when)
        _log.info("scheduler started", tasks=enabled)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop scheduling; with ``wait``, block until running tasks finish.

        ``timeout`` bounds the wait (seconds). Returns True when no task is
        running on return. Safe to call more than once, or before ``start``.
        A task is never interrupted here: the runner must reach its own safe
        point (it should watch the daemon's stop flag).
        """
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait and timeout is None)
        if wait and timeout is not None:
            return self._wait_idle(timeout)
        return not self.running_tasks()

    def _wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, timeout=timeout)

    def reschedule(self, new_tasks: Mapping[str, TaskSchedule]) -> dict[str, list[str]]:
        """Apply a reloaded config's schedules (SIGHUP); returns what changed.

        All triggers are built first, so an invalid schedule raises
        ``ValueError`` with nothing changed. Unchanged tasks keep their next
        run (a reload never postpones them); added tasks run
        ``first_run_delay`` from now; changed ones per
        ``_next_run_after_change``; removed or disabled ones lose their job
        (a run in progress finishes).
        """
        new_enabled = {name: s for name, s in new_tasks.items() if s.enabled}
        triggers = {name: build_trigger(s) for name, s in new_enabled.items()}
        old_enabled = {name: s for name, s in self._tasks.items() if s.enabled}
        now = _utcnow()
        pending = self.next_run_times()
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        for name in sorted(old_enabled.keys() - new_enabled.keys()):
            self._scheduler.remove_job(name)
            changes["removed"].append(name)
        for name in sorted(new_enabled):
            trigger = triggers[name]
            if name not in old_enabled:
                self._add_job(name, trigger, now + self._first_run_delay)
                changes["added"].append(name)
            elif new_enabled[name] != old_enabled[name]:
                with self._cond:
                    last_started = self._last_started.get(name)
                next_run = _next_run_after_change(trigger, now, last_started, pending.get(name))
                self._scheduler.modify_job(name, trigger=trigger, next_run_time=next_run)
                changes["changed"].append(name)
        self._tasks = dict(new_tasks)
        _log.info("schedule reloaded", **changes)
        return changes

    # -- state --

    def next_run_times(self) -> dict[str, datetime | None]:
        """Every configured task's next run (None: disabled), for STATUS= and /healthz."""
        times: dict[str, datetime | None] = dict.fromkeys(self._tasks)
        for job in self._scheduler.get_jobs():
            times[job.id] = job.next_run_time
        return times

    def running_tasks(self) -> dict[str, datetime]:
        """Tasks running right now, with when they started."""
        with self._cond:
            return dict(self._running)

    def status_text(self) -> str:
        """One line for sd_notify ``STATUS=``: what runs now and what runs next."""
        parts = []
        running = self.running_tasks()
        if running:
            parts.append("running: " + ", ".join(sorted(running)))
        upcoming = [
            f"{name} {when:%Y-%m-%d %H:%M:%S}Z"
            for name, when in sorted(self.next_run_times().items())
            if when is not None
        ]
        parts.append("next: " + (", ".join(upcoming) if upcoming else "none"))
        return "; ".join(parts)

    def is_alive(self) -> bool:
        """The watchdog's liveness check: scheduler running and its thread alive.

        A hung task is ``overdue_tasks``' business (the daemon checks both).
        Deliberately not checked: jobs whose next run is in the past, which a
        wall-clock step (NTP at boot) would cause without anything being wrong.
        """
        thread = getattr(self._scheduler, "_thread", None)
        return bool(self._scheduler.running and thread is not None and thread.is_alive())

    def overdue_tasks(self, max_task_runtime: float | None) -> dict[str, float]:
        """Running tasks that have run longer than ``max_task_runtime``, with
        their run time in seconds (None: no limit, so none).

        Measured on the monotonic clock: a wall-clock step neither makes a
        task look hung nor hides one that is.
        """
        if max_task_runtime is None:
            return {}
        now = self._monotonic()
        with self._cond:
            running = dict(self._running_since)
        return {
            task: now - since for task, since in running.items() if now - since > max_task_runtime
        }

    # -- running --

    def execute(self, task_name: str, trigger: str = "scheduled") -> RunRecord:
        """Run ``run(task_name)`` once in this thread and return its record.

        This is the job body. It never raises for an ``Exception`` from the
        runner: the exception becomes the record's outcome, so the listener
        gets the duration for failed runs too. Binds ``task`` and
        ``trigger`` as log context for everything logged during the run.
        """
        started_at = _utcnow()
        t0 = time.monotonic()
        with self._cond:
            self._running[task_name] = started_at
            self._running_since[task_name] = self._monotonic()
            self._last_started[task_name] = started_at
        try:
            with bound_contextvars(task=task_name, trigger=trigger):
                outcome: object = self._run(task_name)
        except Exception as exc:  # noqa: BLE001 -- reported through on_result
            outcome = exc
        finally:
            duration = time.monotonic() - t0
            with self._cond:
                self._running.pop(task_name, None)
                self._running_since.pop(task_name, None)
                self._cond.notify_all()
        return RunRecord(task_name, trigger, started_at, duration, outcome)

    def handle_event(self, event: Any) -> None:
        """The APScheduler listener (public for tests). Cheap and non-blocking
        apart from the hooks, which must be cheap themselves."""
        task: str = event.job_id
        code: int = event.code
        if code == EVENT_JOB_EXECUTED:
            record = event.retval
            if not isinstance(record, RunRecord):  # not our job body; be tolerant
                record = RunRecord(task, "scheduled", event.scheduled_run_time, 0.0, record)
            self._deliver(record)
        elif code == EVENT_JOB_ERROR:
            # Only a BaseException (e.g. SystemExit) escapes execute(); the
            # event has no duration, so approximate it from the slot time.
            started = event.scheduled_run_time
            duration = max(0.0, (_utcnow() - started).total_seconds())
            self._deliver(RunRecord(task, "scheduled", started, duration, event.exception))
        elif code in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            reason = "missed" if code == EVENT_JOB_MISSED else "max_instances"
            if code == EVENT_JOB_MISSED:
                _log.warning(
                    "scheduled run missed",
                    task=task,
                    scheduled=event.scheduled_run_time.isoformat(),
                )
            else:
                _log.warning(
                    "scheduled run skipped: previous run still in progress",
                    task=task,
                    running_since=_iso(self.running_tasks().get(task)),
                )
            if self._on_skipped is not None:
                try:
                    self._on_skipped(task, reason)
                except Exception:  # noqa: BLE001 -- logged; a hook must not break the listener
                    _log.exception("on_skipped hook failed", task=task)

    def _deliver(self, record: RunRecord) -> None:
        try:
            self._on_result(
                record.task, record.trigger, record.started_at, record.duration, record.outcome
            )
        except Exception:  # noqa: BLE001 -- logged; a hook must not break the listener
            _log.exception("on_result hook failed", task=record.task)
        finally:
            if isinstance(record.outcome, BaseException) and record.outcome.__traceback__:
                # drop the frames' locals now rather than when the record dies
                traceback.clear_frames(record.outcome.__traceback__)
