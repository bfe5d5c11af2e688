"""A hung task stops the daemon's ``WATCHDOG=1``, so systemd restarts it.

The hang is real: the test holds Glance's prune lock file (POSIX ``lockf``,
as glance-api's own prune would) and the daemon's prune waits for it
(``agent.glance_lock_timeout: 1h``). The daemon runs as a subprocess with a
real notify socket (``WATCHDOG_USEC`` 2 s: a ping every second). Every wait
is for a datagram or a log line, bounded by a deadline; nothing asserts a
duration. The run time limit is measured on the monotonic clock, which the
scheduler test checks with freezegun stepping the wall clock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from glance_cache_agent.config import TaskSchedule
from glance_cache_agent.driver import Driver
from glance_cache_agent.service.scheduler import TaskScheduler
from tests.helpers.agent_process import Agent, NotifySocket

#: prune only; it starts at once and waits for Glance's prune lock for up to an hour
HUNG_PRUNE: dict[str, Any] = {
    "tasks": {"clean": {"enabled": False}, "reconcile": {"enabled": False}},
    "agent": {"glance_lock_timeout": "1h"},
}


def is_ping(message: dict[str, str]) -> bool:
    return message.get("WATCHDOG") == "1"


def is_withheld(message: dict[str, str]) -> bool:
    return message.get("STATUS", "").startswith("watchdog withheld")


class HeldLock:
    """Glance's prune lock file, held with ``lockf`` as oslo.concurrency holds it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
            self.held = False


@pytest.fixture
def glance_prune_lock(cache: Driver) -> Iterator[HeldLock]:
    lock = HeldLock(os.path.join(cache.base_dir, "glance-cache-prune"))
    try:
        yield lock
    finally:
        lock.release()
        os.close(lock.fd)


def wait_withheld_ticks(notify: NotifySocket, start: int, ticks: int) -> int:
    """Wait for ``ticks`` successive 'watchdog withheld' statuses from ``start``
    on; returns the index of the last. One is sent per supervisor tick."""
    index = start
    for _ in range(ticks):
        index, _ = notify.wait_for("STATUS=watchdog withheld", is_withheld, start=index)
        index += 1
    return index - 1


def test_a_hung_task_stops_the_watchdog_and_says_why(
    agent: Agent, notify: NotifySocket, glance_prune_lock: HeldLock
) -> None:
    daemon = agent.start(
        tasks=HUNG_PRUNE["tasks"], agent={**HUNG_PRUNE["agent"], "max_task_runtime": "1s"}
    )
    record = daemon.wait_log(
        "task overran agent.max_task_runtime; withholding WATCHDOG=1 so systemd restarts the agent",
        task="prune",
    )
    assert record["_priority"] == 3 and record["max_task_runtime"] == 1.0
    assert record["running_seconds"] >= 1.0  # rounded to 0.1 s

    # three supervisor ticks in a row: each says why, none pings
    first, _ = notify.wait_for("STATUS=watchdog withheld", is_withheld)
    last = wait_withheld_ticks(notify, first, 3)
    assert not any(is_ping(m) for m in notify.messages[first : last + 1])
    assert "prune" in notify.messages[last]["STATUS"]
    status, body = daemon.health()
    assert status == 503 and body["status"] == "unhealthy"
    assert any("longer than agent.max_task_runtime" in r for r in body["reasons"])
    assert len(daemon.find_logs(record["event"])) == 1  # logged once, not once per tick

    # Glance lets go: the run finishes and the watchdog is fed again
    glance_prune_lock.release()
    mark = len(notify.messages)
    daemon.wait_log("task finished", task="prune")
    notify.wait_for("WATCHDOG=1 after the run finished", is_ping, start=mark)
    assert daemon.proc.poll() is None


def test_a_long_task_within_the_limit_keeps_the_watchdog_fed(
    agent: Agent, notify: NotifySocket, glance_prune_lock: HeldLock
) -> None:
    """The same wait under the default limit (1h) is not a hang."""
    daemon = agent.start(**HUNG_PRUNE)
    running, _ = notify.wait_for(
        "STATUS=running: prune", lambda m: "running: prune" in m.get("STATUS", "")
    )
    index = running
    for _ in range(3):
        index, _ = notify.wait_for("WATCHDOG=1 while prune waits", is_ping, start=index + 1)
    assert not any(is_withheld(m) for m in notify.messages[running:index])
    assert not daemon.find_logs("task finished")  # still waiting for Glance's lock
    assert daemon.health()[0] == 200


# --- the limit is on the monotonic clock -----------------------------------------


class Monotonic:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_max_task_runtime_ignores_wall_clock_steps() -> None:
    """A wall-clock step of two hours neither makes a running task overdue
    nor does a backward step hide one that is."""
    mono = Monotonic()
    release = threading.Event()
    scheduler = TaskScheduler(
        {"prune": TaskSchedule("prune", interval=3600.0)},
        run=lambda _task: release.wait(30),
        on_result=lambda *_args: None,
        first_run_delay=3600.0,
        monotonic=mono,
    )
    scheduler.start()
    worker = threading.Thread(target=scheduler.execute, args=("prune",))
    try:
        worker.start()
        while "prune" not in scheduler.running_tasks():  # the worker has registered
            worker.join(0.01)
        start = datetime.now(UTC)
        mono.now += 1
        with freeze_time(start + timedelta(hours=2)):
            assert scheduler.overdue_tasks(3600) == {}
            assert scheduler.is_alive()
        mono.now += 3600
        with freeze_time(start - timedelta(hours=2)):
            assert scheduler.overdue_tasks(3600) == {"prune": 3601.0}
            assert scheduler.is_alive()  # alive; the daemon withholds WATCHDOG=1 on overdue
        assert scheduler.overdue_tasks(None) == {}
    finally:
        release.set()
        worker.join(10)
        scheduler.shutdown(wait=True)
