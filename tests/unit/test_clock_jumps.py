"""Prune's idle eviction (``prune.max_idle``) under wall-clock steps.

A forward step larger than ``max_idle`` used to make every image look idle
and empty the cache. Idle time now stops half a ``max_idle`` past the newest
read the cache recorded (stateless, CLI and daemon alike), and the daemon
leaves out the forward steps it saw (``ClockWatch``), which also covers a busy
cache read again after the step. Real cache, real database; the clocks are
freezegun's and a hand-moved elapsed-time counter, never sleeps.
"""

from __future__ import annotations

import time

from freezegun import freeze_time

from glance_cache_agent.driver import Driver
from glance_cache_agent.maintenance import PrunePolicy, run_prune
from glance_cache_agent.maintenance.idle import ClockStep
from glance_cache_agent.service.clockwatch import ClockWatch
from tests.helpers.cache import at, cache_image, no_pause, rows, set_row, uid

HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
T0 = 1_900_000_000




def cache(driver: Driver, read_at: dict[str, float]) -> None:
    """Cache one image per name, last read at the given moment."""
    for name, moment in read_at.items():
        cache_image(driver, uid(name))
        set_row(driver, uid(name), last_accessed=moment)


def prune_at(driver: Driver, moment: float, steps: tuple[ClockStep, ...] = ()) -> list[str]:
    """Run a real prune (no size pressure, ``max_idle: 7d``) with the clock at ``moment``."""
    with freeze_time(at(moment)):
        result = run_prune(
            driver,
            PrunePolicy(max_size=10**12, max_idle=WEEK, batch_pause=0),
            pause=no_pause,
            clock_steps=steps,
        )
    return result.images


def names(*names: str) -> set[str]:
    return {uid(name) for name in names}


class Clocks:
    """A wall clock (freezegun) and an elapsed-time counter moved by hand."""

    def __init__(self) -> None:
        self.elapsed = 1000.0

    def watch(self) -> ClockWatch:
        return ClockWatch(wall=lambda: time.time(), elapsed=lambda: self.elapsed)


def test_a_30_day_forward_step_with_max_idle_7d_evicts_nothing(driver: Driver) -> None:
    """Read up to 3 days before the step, nothing read since: nothing goes
    (a CLI run, no daemon to have seen the step)."""
    cache(driver, {"a": T0 - 3 * DAY, "b": T0 - DAY, "c": T0 - HOUR})
    assert prune_at(driver, T0 + 30 * DAY) == []
    assert set(rows(driver)) == names("a", "b", "c")


def test_genuinely_idle_images_still_go_after_a_step(driver: Driver) -> None:
    """Images idle for over max_idle before the step still go, on a correct
    clock and after a step alike; the ones read recently stay."""
    cache(driver, {"old": T0 - 20 * DAY, "stale": T0 - 10 * DAY, "hot": T0 - HOUR})
    assert prune_at(driver, T0 + 30 * DAY) == [uid("old"), uid("stale")]
    assert set(rows(driver)) == names("hot")


def test_on_a_correct_clock_idle_images_go_on_time(driver: Driver) -> None:
    """A busy cache: what was not read for max_idle goes, what was stays."""
    cache(driver, {"idle": T0 - WEEK - HOUR, "week": T0 - WEEK + HOUR, "hot": T0 - 60})
    assert prune_at(driver, T0) == [uid("idle")]
    assert set(rows(driver)) == names("week", "hot")


def test_a_quiet_cache_keeps_what_was_in_use_when_it_went_quiet(driver: Driver) -> None:
    """Nothing read for 30 days (a quiet cache looks like a step): images idle
    for half of max_idle when the cache went quiet go, the others wait."""
    cache(driver, {"idle": T0 - 30 * DAY - 4 * DAY, "recent": T0 - 30 * DAY - 2 * DAY})
    cache(driver, {"last": T0 - 30 * DAY})
    assert prune_at(driver, T0) == [uid("idle")]
    assert set(rows(driver)) == names("recent", "last")


def test_a_step_the_daemon_saw_protects_a_busy_cache(driver: Driver) -> None:
    """After the step Glance reads one image (stamped on the new clock), which
    disarms the stateless guard; the step the daemon's ClockWatch recorded
    still keeps the images read before it, and genuinely idle ones still go."""
    clocks = Clocks()
    with freeze_time(at(T0)) as frozen:
        watch = clocks.watch()
        frozen.tick(30 * DAY + 1)  # the wall clock steps 30 days ...
        clocks.elapsed += 1  # ... while one second passes
        assert watch.observe() == 30 * DAY
    steps = watch.steps()
    assert steps == (ClockStep(before=T0, size=30 * DAY),)
    cache(driver, {"idle": T0 - 10 * DAY, "a": T0 - 3 * DAY, "b": T0 - HOUR})
    cache(driver, {"read-after-step": T0 + 30 * DAY + 2})

    assert prune_at(driver, T0 + 30 * DAY + 5, steps) == [uid("idle")]
    assert set(rows(driver)) == names("a", "b", "read-after-step")


def test_without_the_daemon_a_busy_cache_after_a_step_loses_the_old_reads(
    driver: Driver,
) -> None:
    """The limit of the stateless guard, stated: a CLI run after a step that
    Glance has read through evicts what was not read since."""
    cache(driver, {"a": T0 - 3 * DAY, "read-after-step": T0 + 30 * DAY + 2})
    assert prune_at(driver, T0 + 30 * DAY + 5) == [uid("a")]


def test_a_backward_step_and_its_correction(driver: Driver) -> None:
    """The clock steps 30 days back: every stamp lies in the future, nothing
    goes and no step is recorded. Reads during the wrong period are stamped
    30 days early; the correction (a forward step) is recorded, so those
    reads are not taken for idle ones once the clock is right again."""
    clocks = Clocks()
    cache(driver, {"before": T0 - HOUR})
    with freeze_time(at(T0)) as frozen:
        watch = clocks.watch()
        frozen.move_to(at(T0 - 30 * DAY))
        clocks.elapsed += 1
        assert watch.observe() == -30 * DAY - 1
        assert watch.steps() == ()
    assert prune_at(driver, T0 - 30 * DAY) == []

    cache(driver, {"during": T0 - 30 * DAY + HOUR})  # read while the clock was wrong
    with freeze_time(at(T0 - 30 * DAY + 2 * HOUR)) as frozen:
        watch.observe()
        frozen.move_to(at(T0 + 2 * HOUR))
        clocks.elapsed += 1
        assert watch.observe() == 30 * DAY - 1
    assert prune_at(driver, T0 + 3 * HOUR, watch.steps()) == []
    assert set(rows(driver)) == names("before", "during")


def test_small_drift_is_not_a_step() -> None:
    """NTP slews and late ticks (below a minute) are not recorded."""
    clocks = Clocks()
    with freeze_time(at(T0)) as frozen:
        watch = clocks.watch()
        frozen.tick(31)
        clocks.elapsed += 1
        assert watch.observe() == 0.0
    assert watch.steps() == ()
