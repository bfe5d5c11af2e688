"""Which files some process holds open for writing, and how sure we can be.

A download in progress keeps ``incomplete/<id>`` open for writing; deleting
it (what Glance's cleaner does with a short ``stall_time``) breaks the
download's commit. Linux exposes every process's descriptors in ``/proc``;
we read them instead of guessing from mtimes.

Writers are recognised by the ``(st_dev, st_ino)`` of what each descriptor
refers to (``stat`` through ``/proc/<pid>/fd/<n>`` reaches the real inode),
never by the path the descriptor's link shows: glance-api in a container sees
the cache at another path (a volume), and a path filter would miss it.

A process whose descriptors we may not read (another user's, or one that is
not dumpable, when we are not root) could be writing any of the files, so
it is counted: ``WriterScan.uninspectable`` says how blind the answer is.
Kernel threads and zombies hold no descriptors, and a process that exits
while we look holds none any more: neither is counted.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection
from dataclasses import dataclass

_WRITE_MODES = os.O_WRONLY | os.O_RDWR
#: ``PF_KTHREAD`` in the flags field of ``/proc/<pid>/stat``.
_PF_KTHREAD = 0x00200000
#: errnos meaning "we may not look", as opposed to "it is gone".
_DENIED = (errno.EACCES, errno.EPERM)

FileIdentity = tuple[int, int]


@dataclass(frozen=True)
class WriterScan:
    """The outcome of one look at every process's descriptors."""

    #: the candidates some process holds open for writing
    busy: frozenset[FileIdentity]
    #: processes whose descriptors could not be read (permission denied)
    uninspectable: int


class _Uninspectable(Exception):
    """This process's descriptors cannot be read by us."""


def _fd_flags(pid: str, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except OSError as exc:
        if exc.errno in _DENIED:
            raise _Uninspectable from None
        return None  # descriptor closed, or process gone
    except ValueError:
        return None
    return None


def _holds_no_descriptors(pid: str) -> bool:
    """True for kernel threads and zombies (or a process already gone).

    ``/proc/<pid>/stat`` is world-readable, so this works where the
    descriptor table is not; the command name may contain spaces or
    parentheses, hence the split after the last ``)``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rpartition(b")")[2].split()
        return fields[0] == b"Z" or bool(int(fields[6]) & _PF_KTHREAD)
    except (OSError, IndexError, ValueError):
        return True


def _writing(pid: str, candidates: Collection[FileIdentity]) -> set[FileIdentity]:
    """The candidates process ``pid`` holds open for writing.

    Raises _Uninspectable when its descriptors may not be read.
    """
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError as exc:
        if exc.errno in _DENIED:
            raise _Uninspectable from None
        return set()  # exited meanwhile
    found: set[FileIdentity] = set()
    for fd in fds:
        try:
            st = os.stat(f"{fd_dir}/{fd}")
        except OSError as exc:
            if exc.errno in _DENIED:
                raise _Uninspectable from None
            continue  # closed meanwhile, or a dangling anonymous object
        key = (st.st_dev, st.st_ino)
        if key in candidates:
            flags = _fd_flags(pid, fd)
            if flags is not None and flags & _WRITE_MODES:
                found.add(key)
    return found


def scan_writers(candidates: Collection[FileIdentity]) -> WriterScan:
    """Which ``candidates`` (``(st_dev, st_ino)`` pairs) any process writes.

    Every process is looked at, our own included (it could be writing the
    file too). Only descriptors whose inode is a candidate cost more than
    one ``stat``. Without candidates nothing is scanned. Where ``/proc`` is
    unavailable the answer is "none busy, none uninspectable".
    """
    if not candidates:
        return WriterScan(frozenset(), 0)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return WriterScan(frozenset(), 0)
    busy: set[FileIdentity] = set()
    uninspectable = 0
    for pid in pids:
        try:
            busy |= _writing(pid, candidates)
        except _Uninspectable:
            if not _holds_no_descriptors(pid):
                uninspectable += 1
    return WriterScan(frozenset(busy), uninspectable)
