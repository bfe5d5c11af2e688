"""TaskScheduler: trigger arithmetic under freezegun, the listener, one live run."""

from __future__ import annotations

import io
import json
import logging
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from freezegun import freeze_time

from glance_cache_agent.config import TaskSchedule
from glance_cache_agent.config.cron import build_trigger, expected_gap, next_fire_times
from glance_cache_agent.service.logs import configure_logging
from glance_cache_agent.service.scheduler import JOB_DEFAULTS, RunRecord, TaskScheduler

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # a Wednesday
WAIT = 5.0  # generous upper bound for Event waits; tests finish far sooner


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def tasks(**schedules: TaskSchedule) -> dict[str, TaskSchedule]:
    return dict(schedules)


DEFAULT_TASKS = tasks(
    clean=TaskSchedule("clean", interval=3600.0),
    prune=TaskSchedule("prune", interval=1800.0),
    reconcile=TaskSchedule("reconcile", interval=21600.0, enabled=False),
)


class Recorder:
    """Collects on_result / on_skipped calls."""

    def __init__(self) -> None:
        self.results: list[tuple[str, str, datetime, float, object]] = []
        self.skipped: list[tuple[str, str]] = []
        self.got_result = threading.Event()

    def on_result(
        self, task: str, trigger: str, started_at: datetime, duration: float, outcome: object
    ) -> None:
        self.results.append((task, trigger, started_at, duration, outcome))
        self.got_result.set()

    def on_skipped(self, task: str, reason: str) -> None:
        self.skipped.append((task, reason))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logs into a buffer; restores the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line[3:]) for line in stream.getvalue().splitlines()]


# --- triggers ------------------------------------------------------------------


def test_job_defaults_never_skip_a_late_run() -> None:
    assert JOB_DEFAULTS == {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def test_interval_without_jitter_is_exact() -> None:
    times = next_fire_times(TaskSchedule("prune", interval=1800.0), NOW, 4)
    assert times == [NOW + timedelta(minutes=30 * n) for n in range(1, 5)]


def test_interval_jitter_stays_within_bounds() -> None:
    random.seed(1234)
    schedule = TaskSchedule("prune", interval=600.0, jitter=60.0)
    for _ in range(20):
        times = next_fire_times(schedule, NOW, 5)
        previous = NOW
        for fire in times:
            # APScheduler 3 adds jitter to the previous (jittered) fire time
            assert timedelta(seconds=600) <= fire - previous <= timedelta(seconds=660)
            previous = fire
    assert len({next_fire_times(schedule, NOW, 1)[0] for _ in range(10)}) > 1


def test_interval_is_anchored_on_the_frozen_clock() -> None:
    with freeze_time(NOW):
        trigger = build_trigger(TaskSchedule("clean", interval=3600.0))
        assert trigger.get_next_fire_time(None, NOW) == NOW + timedelta(hours=1)


def test_cron_runs_across_days_and_months_in_utc() -> None:
    assert next_fire_times(TaskSchedule("clean", cron="30 2 * * *"), NOW, 3) == [
        at(5, 2, 30),
        at(6, 2, 30),
        at(7, 2, 30),
    ]
    assert next_fire_times(
        TaskSchedule("clean", cron="0 23 * * *"), at(28, 23, 30, month=2), 2
    ) == [
        at(1, 23),
        at(2, 23),
    ]


def test_cron_jitter_stays_within_bounds() -> None:
    random.seed(99)
    schedule = TaskSchedule("clean", cron="0 3 * * *", jitter=120.0)
    for _ in range(20):
        (fire,) = next_fire_times(schedule, NOW, 1)
        assert at(5, 3) <= fire <= at(5, 3, 2)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # crontab's Sunday is 0 and 7 (APScheduler 3's from_crontab says Monday)
        ("0 3 * * 0", [at(8, 3), at(15, 3)]),
        ("0 3 * * 7", [at(8, 3), at(15, 3)]),
        ("0 3 * * sun", [at(8, 3), at(15, 3)]),
        ("0 3 * * 1-5", [at(5, 3), at(6, 3), at(9, 3)]),
        ("0 3 * * 5-7", [at(6, 3), at(7, 3), at(8, 3), at(13, 3)]),
        ("0 3 * * */2", [at(5, 3), at(7, 3), at(8, 3), at(10, 3)]),  # sun,tue,thu,sat
        # both day fields restricted: either matches, as in cron
        ("0 0 1 * mon", [at(9, 0), at(16, 0), at(23, 0), at(30, 0), at(1, 0, month=4)]),
        ("@daily", [at(5, 0), at(6, 0)]),
        ("@weekly", [at(8, 0), at(15, 0)]),
    ],
)
def test_cron_follows_crontab_semantics(cron: str, expected: list[datetime]) -> None:
    assert next_fire_times(TaskSchedule("clean", cron=cron), NOW, len(expected)) == expected


def test_cron_wins_over_interval() -> None:
    schedule = TaskSchedule("clean", interval=60.0, cron="0 3 * * *")
    assert next_fire_times(schedule, NOW, 1) == [at(5, 3)]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (TaskSchedule("clean"), "needs a positive interval or a cron expression"),
        (TaskSchedule("clean", interval=0.0), "needs a positive interval"),
        (TaskSchedule("clean", interval=60.0, jitter=-1.0), "jitter must not be negative"),
        (TaskSchedule("clean", cron="0 3 * *"), "expected 5 fields, got 4"),
        (TaskSchedule("clean", cron="0 3 * * 8"), "bad day of week '8'"),
        (TaskSchedule("clean", cron="0 3 * * 5-1"), "backwards day-of-week range"),
        (TaskSchedule("clean", cron="0 25 * * *"), r"cron '0 25 \* \* \*': .* maximum"),
    ],
)
def test_bad_schedules_are_refused(schedule: TaskSchedule, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_trigger(schedule)


# --- TaskScheduler without its thread ---------------------------------------------


def make(
    schedules: dict[str, TaskSchedule] = DEFAULT_TASKS,
    run: Any = lambda name: None,
    recorder: Recorder | None = None,
    first_run_delay: float = 5.0,
) -> TaskScheduler:
    rec = recorder or Recorder()
    return TaskScheduler(
        schedules,
        run,
        rec.on_result,
        first_run_delay=first_run_delay,
        on_skipped=rec.on_skipped,
    )


def test_first_runs_are_soon_and_disabled_tasks_have_none() -> None:
    with freeze_time(NOW):
        scheduler = make()
        assert scheduler.next_run_times() == {
            "clean": NOW + timedelta(seconds=5),
            "prune": NOW + timedelta(seconds=5),
            "reconcile": None,
        }
        assert scheduler.status_text() == (
            "next: clean 2026-03-04 10:00:05Z, prune 2026-03-04 10:00:05Z"
        )


def test_invalid_schedule_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="needs a positive interval"):
        make(tasks(clean=TaskSchedule("clean")))


def test_reschedule_keeps_unchanged_tasks_and_recounts_changed_ones() -> None:
    with freeze_time(NOW) as frozen:
        scheduler = make()
        scheduler.execute("clean")  # clean last started at NOW
        frozen.tick(timedelta(minutes=10))
        changes = scheduler.reschedule(
            {
                **DEFAULT_TASKS,
                "clean": TaskSchedule("clean", interval=1200.0),  # shorter
            }
        )
        assert changes == {"added": [], "removed": [], "changed": ["clean"]}
        times = scheduler.next_run_times()
        assert times["clean"] == NOW + timedelta(minutes=20)  # from the last run
        assert times["prune"] == NOW + timedelta(seconds=5)  # untouched


def test_reschedule_makes_an_overdue_task_due_now_and_keeps_pending_first_runs() -> None:
    with freeze_time(NOW) as frozen:
        scheduler = make()
        scheduler.execute("clean")
        frozen.tick(timedelta(hours=2))
        now = NOW + timedelta(hours=2)
        scheduler.reschedule(
            {
                **DEFAULT_TASKS,
                "clean": TaskSchedule("clean", interval=600.0),
                "prune": TaskSchedule("prune", interval=7200.0),  # never ran yet
            }
        )
        times = scheduler.next_run_times()
        assert times["clean"] == now
        assert times["prune"] == now  # its pending first run was already due


def test_reschedule_to_cron_adds_and_removes() -> None:
    with freeze_time(NOW):
        scheduler = make()
        scheduler.execute("clean")
        changes = scheduler.reschedule(
            tasks(
                clean=TaskSchedule("clean", cron="0 3 * * *"),
                prune=TaskSchedule("prune", interval=1800.0, enabled=False),
                reconcile=TaskSchedule("reconcile", interval=21600.0),
            )
        )
        assert changes == {"added": ["reconcile"], "removed": ["prune"], "changed": ["clean"]}
        assert scheduler.next_run_times() == {
            "clean": at(5, 3),
            "prune": None,
            "reconcile": NOW + timedelta(seconds=5),
        }


def test_an_invalid_reload_changes_nothing() -> None:
    with freeze_time(NOW):
        scheduler = make()
        before = scheduler.next_run_times()
        with pytest.raises(ValueError, match="expected 5 fields"):
            scheduler.reschedule(
                tasks(
                    clean=TaskSchedule("clean", interval=60.0),
                    prune=TaskSchedule("prune", cron="bad"),
                )
            )
        assert scheduler.next_run_times() == before


def test_execute_measures_and_catches_and_binds_context() -> None:
    seen: dict[str, Any] = {}

    with freeze_time(NOW) as frozen:

        def run(name: str) -> object:
            seen.update(structlog.contextvars.get_contextvars())
            seen["running"] = scheduler.running_tasks()
            frozen.tick(timedelta(seconds=2.5))
            if name == "prune":
                raise OSError("disk on fire")
            return {"removed": 3}

        scheduler = make(run=run)
        ok = scheduler.execute("clean")
        failed = scheduler.execute("prune", trigger="adhoc")

    assert ok == RunRecord("clean", "scheduled", NOW, 2.5, {"removed": 3})
    assert not ok.failed
    assert failed.failed
    assert isinstance(failed.outcome, OSError)
    assert failed.trigger == "adhoc"
    assert failed.duration == 2.5
    assert seen["task"] == "prune"
    assert seen["trigger"] == "adhoc"
    assert list(seen["running"]) == ["prune"]
    assert scheduler.running_tasks() == {}
    assert structlog.contextvars.get_contextvars() == {}


# --- the listener, fed synthetic events ---------------------------------------


def test_listener_hands_executed_runs_to_on_result() -> None:
    rec = Recorder()
    scheduler = make(recorder=rec)
    record = RunRecord("prune", "scheduled", NOW, 1.25, {"evicted": 4})
    scheduler.handle_event(
        JobExecutionEvent(EVENT_JOB_EXECUTED, "prune", "default", NOW, retval=record)
    )
    assert rec.results == [("prune", "scheduled", NOW, 1.25, {"evicted": 4})]


def test_listener_reports_failures_with_their_exception() -> None:
    rec = Recorder()
    scheduler = make(recorder=rec)
    error = RuntimeError("boom")
    scheduler.handle_event(
        JobExecutionEvent(
            EVENT_JOB_EXECUTED,
            "clean",
            "default",
            NOW,
            retval=RunRecord("clean", "scheduled", NOW, 0.5, error),
        )
    )
    # what escapes the job body (not an Exception) arrives as EVENT_JOB_ERROR
    exit_ = SystemExit(3)
    with freeze_time(NOW + timedelta(seconds=7)):
        scheduler.handle_event(
            JobExecutionEvent(EVENT_JOB_ERROR, "prune", "default", NOW, exception=exit_)
        )
    assert rec.results == [
        ("clean", "scheduled", NOW, 0.5, error),
        ("prune", "scheduled", NOW, 7.0, exit_),
    ]


def test_listener_warns_about_skipped_runs(log_stream: io.StringIO) -> None:
    rec = Recorder()
    scheduler = make(recorder=rec)
    scheduler.handle_event(JobExecutionEvent(EVENT_JOB_MISSED, "clean", "default", NOW))
    scheduler.handle_event(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "prune", "default", [NOW]))
    assert rec.skipped == [("clean", "missed"), ("prune", "max_instances")]
    assert rec.results == []
    warnings = [e for e in events(log_stream) if e["level"] == "warning"]
    assert [(e["event"], e["task"]) for e in warnings] == [
        ("scheduled run missed", "clean"),
        ("scheduled run skipped: previous run still in progress", "prune"),
    ]


def test_a_failing_hook_is_logged_not_raised(log_stream: io.StringIO) -> None:
    def on_result(*args: object) -> None:
        raise KeyError("metrics")

    scheduler = TaskScheduler(DEFAULT_TASKS, lambda name: None, on_result)
    record = RunRecord("prune", "scheduled", NOW, 1.0, None)
    scheduler.handle_event(
        JobExecutionEvent(EVENT_JOB_EXECUTED, "prune", "default", NOW, retval=record)
    )
    (logged,) = [e for e in events(log_stream) if e["event"] == "on_result hook failed"]
    assert logged["task"] == "prune"
    assert logged["exception"][0]["exc_type"] == "KeyError"


# --- the real scheduler thread (Events, no sleeps) ------------------------------


def test_live_first_run_reaches_on_result() -> None:
    ran = threading.Event()
    rec = Recorder()

    def run(name: str) -> object:
        ran.set()
        return name.upper()

    scheduler = make(tasks(clean=TaskSchedule("clean", interval=3600.0)), run, rec, 0.0)
    assert not scheduler.is_alive()
    scheduler.start()
    try:
        assert scheduler.is_alive()
        assert ran.wait(WAIT)
        assert rec.got_result.wait(WAIT)
        ((task, trigger, _started, duration, outcome),) = rec.results
        assert (task, trigger, outcome) == ("clean", "scheduled", "CLEAN")
        assert duration >= 0
        next_run = scheduler.next_run_times()["clean"]
        assert next_run is not None
        assert next_run > datetime.now(UTC) + timedelta(minutes=59)
        # a live reload: the shorter interval counts from the run just made
        scheduler.reschedule(tasks(clean=TaskSchedule("clean", interval=60.0)))
        rescheduled = scheduler.next_run_times()["clean"]
        assert rescheduled is not None
        assert rescheduled <= _started + timedelta(seconds=60)
    finally:
        assert scheduler.shutdown(wait=True)
    assert not scheduler.is_alive()
    assert scheduler.shutdown()  # twice is fine


def test_shutdown_waits_for_the_running_task() -> None:
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def run(name: str) -> object:
        started.set()
        assert release.wait(WAIT)
        order.append("task finished")
        return None

    scheduler = make(tasks(prune=TaskSchedule("prune", interval=3600.0)), run, None, 0.0)
    scheduler.start()
    assert started.wait(WAIT)
    assert scheduler.is_alive()
    assert "prune" in scheduler.overdue_tasks(0)  # "stuck" for a zero budget
    assert list(scheduler.running_tasks()) == ["prune"]

    returned = threading.Event()

    def stop() -> None:
        scheduler.shutdown(wait=True)
        order.append("shutdown returned")
        returned.set()

    stopper = threading.Thread(target=stop)
    stopper.start()
    # Not a timing assumption: shutdown cannot return while the task is held.
    assert not returned.wait(0.2)
    release.set()
    stopper.join(WAIT)
    assert order == ["task finished", "shutdown returned"]


def test_shutdown_with_timeout_reports_a_task_still_running() -> None:
    started, release = threading.Event(), threading.Event()

    def run(name: str) -> object:
        started.set()
        return release.wait(WAIT)

    scheduler = make(tasks(prune=TaskSchedule("prune", interval=3600.0)), run, None, 0.0)
    scheduler.start()
    assert started.wait(WAIT)
    assert scheduler.shutdown(timeout=0.05) is False
    assert not scheduler.is_alive()
    release.set()
    assert scheduler.shutdown(timeout=WAIT) is True


def test_expected_gap_of_intervals_and_crons() -> None:
    """The stale-task alert's yardstick: interval + jitter, or the widest cron gap."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday
    assert expected_gap(TaskSchedule("prune", interval=1800.0, jitter=60.0), now) == 1860.0
    daily = TaskSchedule("clean", cron="1 0 * * *", jitter=30.0)
    assert expected_gap(daily, now) == 86400.0 + 30.0
    weekdays = TaskSchedule("reconcile", cron="0 3 * * 1-5")
    assert expected_gap(weekdays, now) == 3 * 86400.0  # Friday 03:00 to Monday 03:00
