"""The agent's maintenance lock: one maintenance run at a time per node.

The daemon's scheduled tasks and ad-hoc runs (``glance-cache-agent prune``,
``systemctl start glance-cache-agent-run@prune``) take the same exclusive
``flock`` on ``<runtime_dir>/maintenance.lock`` and write their pid into it,
so a run that cannot get the lock can say who holds it. ``flock`` belongs to
the open file, so two threads of the daemon exclude each other too. The lock
file is never deleted (a deleted lock file that someone holds is no lock).

The runtime directory may belong to glance-api's user while ``sudo
glance-cache-agent prune`` runs as root, so neither the directory nor the
lock file is ever reached through a symlink, and the file is emptied only
once it is known to be a regular, singly-linked file of ours or of the
directory's owner (``driver.lockfile``); anything else raises UnsafeLockFile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from ..driver.lockfile import open_lock_file, wait_for_lock
from ..errors import AgentError, ExitCode

LOCK_NAME = "maintenance.lock"
POLL_INTERVAL = 0.1


class LockBusy(AgentError):
    """Another maintenance run held the lock for longer than we would wait (exit 75)."""

    exit_code = ExitCode.LOCKED

    def __init__(self, path: str, holder_pid: int | None, waited: float) -> None:
        holder = f"pid {holder_pid}" if holder_pid else "an unknown process"
        super().__init__(
            f"another maintenance run holds {path} ({holder}); gave up after {waited:.1f} s"
        )
        self.path = path
        self.holder_pid = holder_pid


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _make_runtime_dir(runtime_dir: str) -> str:
    """Create ``runtime_dir`` if needed (its last component never through a
    symlink, which opening it then refuses); return its normalised path.

    Normalising drops a trailing slash, which would make the kernel follow
    a symlink in the last component despite ``O_NOFOLLOW``.
    """
    runtime_dir = os.path.normpath(runtime_dir)
    os.makedirs(os.path.dirname(runtime_dir), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(runtime_dir)
    return runtime_dir


@contextlib.contextmanager
def maintenance_lock(
    runtime_dir: str, timeout: float | None, stop: Callable[[], bool] | None = None
) -> Iterator[str]:
    """Hold the exclusive maintenance lock for the body; yield its path.

    ``timeout`` None waits for as long as it takes; 0 tries once. Raises
    LockBusy naming the holder's pid when the wait runs out, or as soon as
    ``stop`` answers True (the daemon is shutting down: never wait forever);
    UnsafeLockFile when the directory or the lock file is a symlink or not
    a file we may empty.
    """
    runtime_dir = _make_runtime_dir(runtime_dir)
    path = os.path.join(runtime_dir, LOCK_NAME)
    fd = open_lock_file(runtime_dir, LOCK_NAME, os.O_RDWR, follow_dir=False, ours_only=True)
    try:
        waited = wait_for_lock(
            fd, record_lock=False, timeout=timeout, poll=POLL_INTERVAL, stop=stop
        )
        if waited is not None:
            raise LockBusy(path, _read_pid(fd), waited)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
