"""Shared test helpers for a real cache directory with a real ``cache.db``."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from glance_cache_agent.driver import CacheDriver, Driver


def uid(name: str | int) -> str:
    """The image id (a UUID) a test calls ``name``: deterministic, lowercase,
    and in the same sort order as the names.

    Glance issues only UUIDs and only UUID-named files are images, so tests
    name images through this. The name's UTF-8 bytes, hex-encoded and padded
    with zeros to 32 digits, are the UUID's digits: ``uid("a") < uid("b")``
    exactly when ``"a" < "b"``, so LRU ties (broken by id) and list-cached
    order (by id) follow the names.
    """
    raw = str(name).encode()
    if not 0 < len(raw) <= 16 or b"\x00" in raw:
        raise ValueError(f"uid() takes 1 to 16 bytes without NUL, not {name!r}")
    digits = raw.hex().ljust(32, "0")
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def cache_image(driver: CacheDriver, image_id: str, size: int = 1024) -> Path:
    """Cache ``image_id`` with ``size`` bytes through the real write path."""
    with driver.open_for_write(image_id) as cache_file:
        cache_file.write(b"x" * size)
    return Path(driver.get_image_filepath(image_id))


def read_image(driver: CacheDriver, image_id: str) -> bytes:
    """Read ``image_id`` completely through the read path (counts a hit)."""
    with driver.open_for_read(image_id) as cache_file:
        return cache_file.read()


def set_row(driver: Driver, image_id: str, **columns: object) -> None:
    """Overwrite columns of one row directly in SQLite (test set-up only)."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute(
            f"UPDATE cached_images SET {assignments} WHERE image_id = ?",
            (*columns.values(), image_id),
        )


def rows(driver: Driver) -> dict[str, tuple[float, float, int, int]]:
    """``{image_id: (last_accessed, last_modified, size, hits)}`` read with plain sqlite3."""
    with sqlite3.connect(driver.db_path) as conn:
        return {
            r[0]: (r[1], r[2], r[3], r[4])
            for r in conn.execute(
                "SELECT image_id, last_accessed, last_modified, size, hits FROM cached_images"
            )
        }


def write_file(
    path: Path, size: int = 1024, age: float | None = None, now: float | None = None
) -> Path:
    """Create ``path`` with ``size`` bytes; with ``age``, set its mtime/atime that far back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"y" * size)
    if age is not None:
        moment = (time.time() if now is None else now) - age
        os.utime(path, (moment, moment))
    return path


def disk_state(root: str) -> dict[str, tuple[int, int, int]]:
    """Every regular file under ``root``: relative path -> (size, mtime_ns, inode)."""
    state = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            state[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
            )
    return state


def full_state(driver: Driver) -> tuple[object, ...]:
    """Files, rows and the database's bytes: equal before and after means nothing changed."""
    db_hash = hashlib.sha256(Path(driver.db_path).read_bytes()).hexdigest()
    return disk_state(driver.base_dir), rows(driver), db_hash


#: A real process that holds a file open for writing (a live download) until its stdin closes.
WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"w" * 4096)
print("ready", flush=True)
sys.stdin.read()
os.close(fd)
"""


def start_writer(path: Path) -> subprocess.Popen[str]:
    """Start a WRITER process on ``path`` and wait until it holds the file open."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def no_pause(_seconds: float) -> None:
    """Stand-in for ``time.sleep``: timing logic is never tested with sleeps."""


def at(moment: float) -> datetime:
    """``moment`` (epoch seconds) as an aware UTC datetime, for freezegun."""
    return datetime.fromtimestamp(moment, tz=UTC)
