"""Forward steps of the wall clock, as the daemon sees them.

The daemon's supervisor reads the wall clock and ``CLOCK_BOOTTIME`` (which,
unlike ``CLOCK_MONOTONIC``, keeps counting while the machine is suspended)
about once a second. When the wall clock advanced more than the elapsed time
by over ``tolerance``, it stepped; the step is kept so that prune's idle
ageing leaves it out (``maintenance/idle.py``). Backward steps are only
reported: every stamp then lies in the future, which nothing treats as idle.

A step wrongly suspected (a VM paused without its guest knowing) only delays
idle evictions; it never brings one forward.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..maintenance.idle import ClockStep

#: wall-clock drift between two observations that is not a step (NTP slews, tick delays)
TOLERANCE = 60.0
#: the newest steps kept (each only delays idle evictions)
KEEP = 16


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class ClockWatch:
    """Compares successive wall and elapsed-time readings; thread-safe."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        elapsed: Callable[[], float] = _boottime,
        tolerance: float = TOLERANCE,
    ) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self._tolerance = tolerance
        self._lock = threading.Lock()
        self._last = (wall(), elapsed())
        self._steps: list[ClockStep] = []

    def observe(self) -> float:
        """Take one reading; returns the step since the last one in seconds
        (positive: forward) when it exceeds the tolerance, else 0."""
        wall, elapsed = self._wall(), self._elapsed()
        with self._lock:
            last_wall, last_elapsed = self._last
            self._last = (wall, elapsed)
            step = (wall - last_wall) - (elapsed - last_elapsed)
            if step > self._tolerance:
                self._steps = [*self._steps, ClockStep(before=last_wall, size=step)][-KEEP:]
        return step if abs(step) > self._tolerance else 0.0

    def steps(self) -> tuple[ClockStep, ...]:
        """The forward steps seen so far, oldest first."""
        with self._lock:
            return tuple(self._steps)
