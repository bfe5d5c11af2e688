"""Test-only crash points: SIGKILL this process at a named step of its work.

Off by default. ``GLANCE_CACHE_AGENT_TEST_KILL_AT=POINT:N`` (read once, at
import) makes the process SIGKILL itself on its N-th pass through
``crash_point("POINT")``, so a crash-safety test can kill a maintenance run
at a known step instead of after a random delay and hope. Unset, a point
costs one comparison with ``None``. Never set it in production.

Points (each is passed once per item, in the order the work is done):

* ``db:commit`` -- inside a write transaction, its statements executed,
  just before ``COMMIT``;
* ``db:committed`` -- just after a write transaction's ``COMMIT``;
* ``prune:unlinked`` -- prune has unlinked one victim's file; its row is
  still there (rows go after the batch's files, in one transaction);
* ``remove`` -- clean or reconcile has removed one file.
"""

from __future__ import annotations

import os
import signal

ENV = "GLANCE_CACHE_AGENT_TEST_KILL_AT"


def parse_kill_at(spec: str | None) -> tuple[str, int] | None:
    """``"prune:unlinked:3"`` -> ``("prune:unlinked", 3)``; unset or empty -> None."""
    if not spec:
        return None
    point, _, count = spec.rpartition(":")
    if not point or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N with N >= 1, e.g. prune:unlinked:3")
    return point, int(count)


_target = parse_kill_at(os.environ.get(ENV))
_passes = 0


def crash_point(point: str) -> None:
    """Count a pass through ``point``; SIGKILL the process on the armed pass."""
    global _passes
    if _target is None or point != _target[0]:
        return
    _passes += 1
    if _passes == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV", "crash_point", "parse_kill_at"]
