"""The agent's maintenance lock, held by real processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from glance_cache_agent.service.locks import LOCK_NAME, LockBusy, maintenance_lock

HOLDER = r"""
import sys
from glance_cache_agent.service.locks import maintenance_lock
with maintenance_lock(sys.argv[1], timeout=0):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold(runtime_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(runtime_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_busy_lock_names_the_holders_pid(tmp_path: Path) -> None:
    holder = _hold(tmp_path)
    try:
        with pytest.raises(LockBusy) as info, maintenance_lock(str(tmp_path), timeout=0.2):
            pytest.fail("the lock must not be granted while another process holds it")
        assert info.value.holder_pid == holder.pid
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.communicate("")
    with maintenance_lock(str(tmp_path), timeout=0) as path:
        assert Path(path).read_text().strip() == str(__import__("os").getpid())
    assert (tmp_path / LOCK_NAME).exists(), "the lock file is never deleted"
    assert (tmp_path / LOCK_NAME).read_text() == "", "the pid is cleared on release"


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()
    outcome: list[object] = []

    def first() -> None:
        with maintenance_lock(str(tmp_path), timeout=0):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    try:
        with maintenance_lock(str(tmp_path), timeout=0):
            outcome.append("granted")
    except LockBusy as exc:
        outcome.append(exc)
    release.set()
    thread.join(10)
    assert isinstance(outcome[0], LockBusy)


def test_waits_for_the_holder_then_succeeds(tmp_path: Path) -> None:
    holder = _hold(tmp_path)
    granted = threading.Event()

    def waiter() -> None:
        with maintenance_lock(str(tmp_path), timeout=30):
            granted.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not granted.is_set()
    holder.communicate("")  # the holder exits: its lock goes with it
    thread.join(30)
    assert granted.is_set()


def test_creates_the_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "agent"
    with maintenance_lock(str(runtime), timeout=0):
        assert (runtime / LOCK_NAME).is_file()


def test_a_stop_request_ends_an_unbounded_wait(tmp_path: Path) -> None:
    """The daemon waits for the lock without a limit, but never past a SIGTERM."""
    holder = _hold(tmp_path)
    try:
        asked: list[int] = []

        def stop() -> bool:
            asked.append(1)
            return len(asked) >= 3

        with pytest.raises(LockBusy) as info, maintenance_lock(str(tmp_path), None, stop):
            pytest.fail("the lock must not be granted while another process holds it")
        assert info.value.holder_pid == holder.pid
        assert len(asked) == 3
    finally:
        holder.communicate("")
