"""Opening lock files without ever following a symlink, even as root.

Lock files live in directories another user may own: Glance's in its cache
directory or ``lock_path`` (glance-api's user), the agent's maintenance lock
in a runtime directory that may belong to that user too. An agent run as
root that opened ``<dir>/<name>`` by path would follow whatever that user
planted there and create, lock or empty any file on the host. So a lock file
is opened relative to a descriptor of its directory:

* with ``O_NOFOLLOW`` (a symlink is refused, dangling or not; nothing is ever
  created at its target) and ``O_NONBLOCK`` (a fifo cannot hang us), and it
  must then be a regular file;
* created only with ``O_EXCL``; only a file this call created is handed to
  the directory's owner (so glance-api can open a lock file root made);
* a file the caller will write into (``ours_only``) must moreover have one
  link and belong to us or to the directory's owner: a hard link to a file
  elsewhere is never emptied.

Refusals raise UnsafeLockFile naming the path and the reason.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable

from .errors import UnsafeLockFile

_NO_SURPRISES = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: open(2) errnos that mean "this name is not a plain file we may use".
_REFUSED = {
    errno.ELOOP: "it is a symbolic link",
    errno.ENXIO: "it is not a regular file",
    errno.EISDIR: "it is not a regular file",
}
#: Attempts when the file vanishes between "it exists" and opening it.
_ATTEMPTS = 5


def _open_directory(directory: str, path: str, *, follow: bool) -> int:
    """A descriptor of ``directory``; with ``follow`` False a symlink is refused.

    Raises UnsafeLockFile about lock file ``path`` for a symlink (when not
    following) or a non-directory.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(directory, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if os.path.islink(directory) else "not a directory"
            raise UnsafeLockFile(path, f"its directory {directory} is {kind}") from None
        raise


def _open_or_create(dir_fd: int, path: str, name: str, access: int) -> tuple[int, bool]:
    """Open ``name`` in ``dir_fd``, creating it exclusively if absent: (fd, created)."""
    for _ in range(_ATTEMPTS):
        create = access | os.O_CREAT | os.O_EXCL | _NO_SURPRISES
        try:
            return os.open(name, create, 0o644, dir_fd=dir_fd), True
        except FileExistsError:
            pass  # exists (a symlink too, dangling or not): open it, never through it
        try:
            return os.open(name, access | _NO_SURPRISES, dir_fd=dir_fd), False
        except FileNotFoundError:
            continue  # removed between the two calls: try to create it again
        except OSError as exc:
            if exc.errno in _REFUSED:
                raise UnsafeLockFile(path, _REFUSED[exc.errno]) from None
            raise
    raise UnsafeLockFile(path, "it keeps appearing and disappearing")


def _check_ours(st: os.stat_result, directory: os.stat_result, path: str) -> None:
    if st.st_nlink != 1:
        raise UnsafeLockFile(path, f"it has {st.st_nlink} hard links")
    if st.st_uid not in (os.geteuid(), directory.st_uid):
        raise UnsafeLockFile(
            path, f"it belongs to uid {st.st_uid}, neither us nor the directory's owner"
        )


def open_lock_file(
    directory: str, name: str, access: int, *, follow_dir: bool = True, ours_only: bool = False
) -> int:
    """Open lock file ``directory/name`` with ``access`` (``O_WRONLY | O_APPEND``...).

    Creates it if absent. ``follow_dir`` False refuses a symlinked
    ``directory`` too. ``ours_only`` is for files the caller writes or
    truncates. The caller closes the returned descriptor.
    """
    path = os.path.join(directory, name)
    dir_fd = _open_directory(directory, path, follow=follow_dir)
    try:
        fd, created = _open_or_create(dir_fd, path, name, access)
        try:
            st, dir_st = os.fstat(fd), os.fstat(dir_fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeLockFile(path, "it is not a regular file")
            if created:
                _hand_to_directory_owner(fd, dir_st)
            elif ours_only:
                _check_ours(st, dir_st, path)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


def _hand_to_directory_owner(fd: int, directory: os.stat_result) -> None:
    """Give a lock file root just created to the directory's owner.

    glance-api runs as that user and must be able to open it too, or its
    own prune/clean API would fail on our root-owned file.
    """
    if os.geteuid() == 0 and (directory.st_uid, directory.st_gid) != (0, 0):
        os.fchown(fd, directory.st_uid, directory.st_gid)


#: errnos of a non-blocking lock attempt that mean "someone else holds it"
_BUSY = {errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK}


def wait_for_lock(
    fd: int,
    *,
    record_lock: bool,
    timeout: float | None,
    poll: float,
    stop: Callable[[], bool] | None = None,
    started: float | None = None,
) -> float | None:
    """Take an exclusive lock on ``fd``, polling; None once it is held.

    ``record_lock`` True takes a POSIX ``lockf`` record lock (what
    oslo.concurrency takes, owned by the process), False an ``flock`` (owned
    by the open file). ``timeout`` None waits for as long as it takes, 0
    tries once. Returns the seconds waited (counted from ``started``, a
    ``time.monotonic()`` value, default now) when the wait ran out or
    ``stop`` answered True; the caller raises its own error.
    """
    take = fcntl.lockf if record_lock else fcntl.flock
    begun = time.monotonic() if started is None else started
    while True:
        try:
            take(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
        waited = time.monotonic() - begun
        if (timeout is not None and waited >= timeout) or (stop is not None and stop()):
            return waited
        time.sleep(poll)
