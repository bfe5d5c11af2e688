"""When each task fires: APScheduler triggers from a ``TaskSchedule`` (pure).

``build_trigger`` and ``next_fire_times`` let tests check the scheduling
arithmetic under freezegun without the scheduler thread; ``expected_gap``
feeds the staleness series that alert rules compare against.

``cron`` is a standard five-field crontab expression, interpreted the way
cron does -- which APScheduler 3's ``CronTrigger.from_crontab`` does not:
day-of-week 0 (and 7) is Sunday (APScheduler: 0 is Monday), and when both
day-of-month and day-of-week are restricted a day matching *either* fires
(APScheduler: both).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.combining import OrTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from .model import TaskSchedule

__all__ = ["build_trigger", "expected_gap", "next_fire_times"]

_CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: crontab numbering: 0 (and 7) is Sunday
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(token: str, expr: str) -> int:
    if token in _CRON_DAYS:
        return _CRON_DAYS.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    raise ValueError(f"cron {expr!r}: bad day of week {token!r} (0-7 or sun-sat)")


def _cron_day_of_week(field: str, expr: str) -> str:
    """Translate a crontab day-of-week field (0/7 = Sunday) into APScheduler day names."""
    days: set[int] = set()
    for item in field.lower().split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron {expr!r}: bad step {item!r}")
            step = int(step_text)
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _cron_day(first, expr), _cron_day(last, expr)
            if low > high:
                raise ValueError(f"cron {expr!r}: backwards day-of-week range {base!r}")
        else:
            low = _cron_day(base, expr)
            high = 7 if slash else low
        days.update(day % 7 for day in range(low, high + 1, step))
    if days == set(range(7)):
        return "*"
    return ",".join(_CRON_DAYS[day] for day in sorted(days))


def _cron_trigger(expr: str, jitter: float | None) -> BaseTrigger:
    expanded = _CRON_MACROS.get(expr.strip().lower(), expr)
    fields = expanded.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r}: expected 5 fields, got {len(fields)}")
    minute, hour, dom, month, dow = fields
    dow_names = _cron_day_of_week(dow, expr)
    common = {"minute": minute, "hour": hour, "month": month, "timezone": UTC}
    try:
        if not dom.startswith("*") and not dow.startswith("*"):
            # cron fires on days matching either field
            return OrTrigger(
                [
                    CronTrigger(day=dom, day_of_week="*", **common),
                    CronTrigger(day="*", day_of_week=dow_names, **common),
                ],
                jitter=jitter,
            )
        return CronTrigger(day=dom, day_of_week=dow_names, jitter=jitter, **common)
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from None


def build_trigger(schedule: TaskSchedule, now: datetime | None = None) -> BaseTrigger:
    """The APScheduler trigger for ``schedule``: cron (UTC) if set, else interval.

    ``now`` anchors an interval trigger (first fire ``now + interval``);
    default: the clock. Raises ``ValueError`` for a schedule that cannot fire (no or non-positive
    interval, negative jitter, malformed cron expression).
    """
    if schedule.jitter < 0:
        raise ValueError(f"task {schedule.name!r}: jitter must not be negative")
    jitter = schedule.jitter or None
    if schedule.cron is not None:
        return _cron_trigger(schedule.cron, jitter)
    if schedule.interval is None or schedule.interval <= 0:
        raise ValueError(f"task {schedule.name!r}: needs a positive interval or a cron expression")
    start = None if now is None else now + timedelta(seconds=schedule.interval)
    return IntervalTrigger(seconds=schedule.interval, start_date=start, jitter=jitter, timezone=UTC)


def next_fire_times(schedule: TaskSchedule, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times of ``schedule`` if scheduled at ``now``.

    Mirrors the scheduler, which asks the trigger for the time after each
    (punctual) run; jitter makes each element random within its bounds.
    Ignores the scheduler's own first run (``first_run_delay``).
    """
    trigger = build_trigger(schedule, now)
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    while len(times) < count:
        fire: datetime | None = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire)
        previous = current = fire
    return times


def expected_gap(schedule: TaskSchedule, now: datetime, horizon: int = 64) -> float:
    """The longest gap, in seconds, to expect between two scheduled starts.

    An interval plus its jitter; for cron, the widest gap among the next
    ``horizon`` fire times (a week-day schedule's weekend gap, say) plus
    jitter. Alert rules use it to call a task stale.
    """
    if schedule.cron is None:
        return float(schedule.interval or 0.0) + schedule.jitter
    steady = TaskSchedule(schedule.name, cron=schedule.cron)
    times = next_fire_times(steady, now, horizon)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    return (max(gaps) if gaps else 0.0) + schedule.jitter
