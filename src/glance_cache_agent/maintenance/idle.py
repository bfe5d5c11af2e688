"""Which images are idle (``prune.max_idle``), robust to wall-clock steps.

Glance stamps ``last_accessed`` with ``time.time()``, so idle time is wall
time -- and a forward step of the wall clock larger than ``max_idle``
(a wrong NTP source, a restored VM, an operator typo) would make every image
look idle at once and empty the cache. Two guards, both of which can only
ever *delay* an idle eviction, never bring one forward under a correct clock:

1. **Idle time stops at the cache's last sign of life** (stateless, every
   run). The reference moment is ``min(now, newest_access + max_idle / 2)``:
   the wall clock counts on past the newest read the cache has recorded for
   at most half of ``max_idle``. After a step of any size that nobody has
   read through yet, only images that were already idle for half of
   ``max_idle`` before the step can go. Under a correct clock, an image idle
   for half of ``max_idle`` when the whole cache went quiet is still evicted
   on time; the others wait until the cache is read again.
2. **Steps the daemon saw are subtracted** (one daemon lifetime). The daemon
   compares the wall clock with ``CLOCK_BOOTTIME`` every second and records
   each forward step (``ClockStep``); a read stamped before a step is aged
   as if the step had not happened. This covers a busy cache, where the
   first read after the step would otherwise disarm guard 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: how far past the newest recorded read idle time may run, as a fraction of max_idle
IDLE_GRACE = 0.5


@dataclass(frozen=True)
class ClockStep:
    """A forward step of the wall clock: readings up to ``before`` were taken
    on a timeline ``size`` seconds behind the current one."""

    before: float
    size: float


@dataclass(frozen=True)
class IdleClock:
    """Ages ``last_accessed`` stamps against a step-robust cutoff."""

    cutoff: float
    steps: tuple[ClockStep, ...] = ()

    def age_stamp(self, last_accessed: float) -> float:
        """``last_accessed`` moved onto the current timeline (steps after it added)."""
        return last_accessed + sum(s.size for s in self.steps if last_accessed <= s.before)

    def is_idle(self, last_accessed: float) -> bool:
        return self.age_stamp(last_accessed) < self.cutoff


def idle_clock(
    max_idle: float | None,
    now: float,
    newest_access: float | None = None,
    steps: Sequence[ClockStep] = (),
) -> IdleClock | None:
    """The idle test for one prune run; None when ``max_idle`` is off.

    ``newest_access`` is the latest ``last_accessed`` in the cache (None:
    unknown, plain wall-clock ageing); ``steps`` the forward steps the
    daemon observed.
    """
    if max_idle is None:
        return None
    clock = IdleClock(cutoff=now - max_idle, steps=tuple(steps))
    if newest_access is None:
        return clock
    reference = min(now, clock.age_stamp(newest_access) + max_idle * IDLE_GRACE)
    return IdleClock(cutoff=reference - max_idle, steps=clock.steps)
