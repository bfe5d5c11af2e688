"""Glance's inter-process locks, taken the way oslo.concurrency takes them.

oslo.concurrency's external locks (fasteners) open ``<lock_path>/<name>`` in
append mode and hold a POSIX ``lockf`` record lock on it. Taking the same lock
on the same file serialises us with glance-api's ``POST /v2/cache/prune`` and
``/clean`` and with its ``image_cache_db_init``. Lock files are never deleted:
a deleted lock file that someone holds breaks mutual exclusion.

POSIX record locks belong to the process, not the thread, and closing *any*
descriptor of the file releases them, so a per-path ``threading.Lock`` guards
against two threads of one process both "holding" the file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

from .errors import DriverError
from .lockfile import open_lock_file, wait_for_lock

_thread_locks: dict[str, threading.Lock] = {}
_registry_guard = threading.Lock()

#: Pause between attempts while another process holds the lock.
POLL_INTERVAL = 0.05


class LockTimeout(DriverError):
    """Another process held a Glance lock for longer than we would wait."""

    def __init__(self, path: str, waited: float) -> None:
        super().__init__(f"lock {path} is held by another process (waited {waited:.1f} s)")
        self.path = path
        self.waited = waited


def _thread_lock(path: str) -> threading.Lock:
    with _registry_guard:
        return _thread_locks.setdefault(path, threading.Lock())


@contextlib.contextmanager
def external_lock(lock_path: str, name: str, timeout: float | None = None) -> Iterator[str]:
    """Hold oslo's external lock ``name`` in ``lock_path`` for the body.

    ``timeout`` None waits forever, 0 tries once. Raises LockTimeout when the
    lock could not be had in time, UnsafeLockFile when the lock file is a
    symlink or not a regular file. Yields the lock file's path.
    """
    path = os.path.join(lock_path, name)
    started = time.monotonic()
    guard = _thread_lock(path)
    if not guard.acquire(timeout=-1 if timeout is None else timeout):
        raise LockTimeout(path, time.monotonic() - started)
    try:
        # append mode, as oslo opens it; never through a symlink, and a file we
        # create as root goes to lock_path's owner, where glance-api opens it
        fd = open_lock_file(lock_path, name, os.O_WRONLY | os.O_APPEND)
        try:
            waited = wait_for_lock(
                fd, record_lock=True, timeout=timeout, poll=POLL_INTERVAL, started=started
            )
            if waited is not None:
                raise LockTimeout(path, waited)
            try:
                yield path
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        guard.release()
