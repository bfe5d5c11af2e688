"""Which files under a directory some process holds open for writing.

A download in progress keeps ``incomplete/<id>`` open for writing; deleting
it (what Glance's cleaner does with a short ``stall_time``) breaks the
download's commit. Linux exposes every process's descriptors in ``/proc``;
we read them instead of guessing from mtimes. Processes we may not inspect
are skipped (as root, which the agent normally is not, we see all of them).
"""

from __future__ import annotations

import os

_WRITE_MODES = os.O_WRONLY | os.O_RDWR


def _fd_flags(pid: str, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        return None
    return None


def files_open_for_writing(directory: str) -> set[tuple[int, int]]:
    """Return ``(st_dev, st_ino)`` of files under ``directory`` open for writing.

    Keys are inode identities, not paths, so a file renamed while we look is
    still recognised. Returns an empty set where ``/proc`` is unavailable.
    """
    prefix = os.path.realpath(directory) + os.sep
    found: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(prefix):
                continue
            flags = _fd_flags(pid, fd)
            if flags is None or not flags & _WRITE_MODES:
                continue
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
    return found
