"""Read a small configuration file without trusting what the path names.

A config path may name a fifo (``open`` would block until a writer comes),
a character device such as ``/dev/zero`` (``read`` would never end), a
directory, or a file far too large to be a config. The file is opened
non-blocking and checked with ``fstat`` on the open descriptor (so a path
swapped after a ``stat`` cannot fool us) before a single byte is read.
"""

from __future__ import annotations

import os
import stat

__all__ = ["MAX_CONFIG_BYTES", "UnsafeFile", "read_small_file"]

#: Largest config file we read; real ones are a few KiB.
MAX_CONFIG_BYTES = 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a fifo"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnsafeFile(Exception):
    """The path cannot be read as a config file; the message says why."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def read_small_file(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of regular file ``path``, at most ``limit`` of them.

    Raises UnsafeFile for anything that is not a regular file of at most
    ``limit`` bytes, or that cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFile(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"it is {_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # read to EOF, never more than limit + 1 bytes
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UnsafeFile(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise UnsafeFile(f"it is larger than {limit} bytes: too large for a config file")
    return b"".join(chunks)
