"""A Glance-style writer: how long Glance's own writes wait while the agent works.

Run as a child process by the benches (``python bench/glance_writer.py DB STOP [PACE]``).
It copies what glance-api does on every cache hit with the sqlite driver
(``drivers/sqlite.py`` + ``drivers/common.py``): a new connection with
``timeout=0`` (no busy wait), ``UPDATE cached_images SET hits = hits + 1`` on an
existing row, ``commit()``, each call retried every 50 ms on "database is
locked" until 2 s have passed, then ``TimeoutError``. It writes every PACE
seconds (default 0.01: 100 cache hits a second, far above what one glance-api
serves) until the file STOP exists, prints ``ready`` after its first write and, at the end, one JSON
line: writes done, timeouts, and the worst and p99 wait (seconds from the first
attempt of a write to its commit). A write that found the lock free waits
about 0.1 ms; every time it finds the lock taken costs it at least one 50 ms
retry sleep.

Only existing rows are updated (hits and ``last_accessed`` of rows read from
the database at start), so the measured cache keeps its images and sizes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TypeVar

#: glance/image_cache/drivers/common.py
DEFAULT_SQL_CALL_TIMEOUT = 2.0
RETRY_SLEEP = 0.05
#: rows whose hits the writer bumps, taken from the middle of the LRU order
#: (never the oldest: a prune measured at the same time would skip them)
TOUCHED_ROWS = 50

T = TypeVar("T")


def call(fn: Callable[[], T]) -> T:
    """Glance's retry loop: retry "locked" every 50 ms for 2 s, then TimeoutError."""
    started = time.monotonic()
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            if time.monotonic() - started >= DEFAULT_SQL_CALL_TIMEOUT:
                raise TimeoutError(str(exc)) from exc
            time.sleep(RETRY_SLEEP)


def pick_rows(db_path: str) -> list[str]:
    """Ids of rows in the middle of the LRU order (read once, before timing)."""
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        count = conn.execute("SELECT COUNT(*) FROM cached_images").fetchone()[0]
        rows = conn.execute(
            "SELECT image_id FROM cached_images ORDER BY last_accessed DESC LIMIT ? OFFSET ?",
            (TOUCHED_ROWS, count // 4),
        ).fetchall()
    finally:
        conn.close()
    return [str(r[0]) for r in rows]


def one_write(db_path: str, image_id: str) -> None:
    """One hit as glance-api records it: its own connection, PRAGMAs, UPDATE, commit."""
    conn = sqlite3.connect(db_path, timeout=0)
    try:
        call(lambda: conn.execute("PRAGMA synchronous = NORMAL"))
        call(lambda: conn.execute("PRAGMA temp_store = MEMORY"))
        call(
            lambda: conn.execute(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                (time.time(), image_id),
            )
        )
        call(conn.commit)
    finally:
        conn.close()


def main(db_path: str, stop_path: str, pace: float = 0.01) -> dict[str, float]:
    """Write until ``stop_path`` exists; return the counts and waits."""
    ids = pick_rows(db_path)
    waits: list[float] = []
    timeouts = 0
    n = 0
    while not os.path.exists(stop_path):
        started = time.perf_counter()
        try:
            one_write(db_path, ids[n % len(ids)])
        except TimeoutError:
            timeouts += 1
        waits.append(time.perf_counter() - started)
        if n == 0:
            print("ready", flush=True)
        n += 1
        time.sleep(pace)
    waits.sort()
    return {
        "writes": len(waits),
        "timeouts": timeouts,
        "max": waits[-1] if waits else 0.0,
        "p99": waits[max(0, int(len(waits) * 0.99) - 1)] if waits else 0.0,
        "retried": sum(1 for w in waits if w >= RETRY_SLEEP),
    }


if __name__ == "__main__":
    pace = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    print(json.dumps(main(sys.argv[1], sys.argv[2], pace)), flush=True)
