"""Scenario 50: a Glance-style writer never times out while we prune.

Glance's connections use ``timeout=0`` and retry every 50 ms for 2 s, then
raise ``TimeoutError``. A process that copies that loop (drivers/common.py)
updates hits and inserts rows as fast as it can while our prune evicts 1000
images with its production batching (100 rows, 0.1 s pauses). It must never
give up, and our prune must still finish its work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from glance_cache_agent.driver import CacheSettings, Driver
from glance_cache_agent.maintenance import PrunePolicy, run_prune

# Like Glance's SqliteConnection, every execute() and commit() goes through
# the retry loop (PRAGMAs included: a schema read needs a SHARED lock).
GLANCE_STYLE_WRITER = r"""
import json, os, sqlite3, sys, time

db_path, stop_path = sys.argv[1], sys.argv[2]
DEFAULT_SQL_CALL_TIMEOUT = 2.0  # glance/image_cache/drivers/common.py

def call(fn):
    started = time.monotonic()
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            if time.monotonic() - started >= DEFAULT_SQL_CALL_TIMEOUT:
                raise TimeoutError(str(exc))
            time.sleep(0.05)

ops = timeouts = 0
latencies = []
n = 0
announced = False
while not os.path.exists(stop_path):
    started = time.monotonic()
    conn = sqlite3.connect(db_path, timeout=0)
    try:
        call(lambda: conn.execute("PRAGMA synchronous = NORMAL"))
        call(lambda: conn.execute("PRAGMA temp_store = MEMORY"))
        if n % 5 == 0:
            call(lambda: conn.execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
                " VALUES (?, ?, ?, 0, 1)", ("glance-%d" % n, time.time(), time.time())))
        else:
            call(lambda: conn.execute(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                (time.time(), "keep-%d" % (n % 50))))
        call(conn.commit)
        ops += 1
    except TimeoutError:
        timeouts += 1
    finally:
        conn.close()
    latencies.append(time.monotonic() - started)
    n += 1
    if not announced:
        print("ready", flush=True)
        announced = True
latencies.sort()
print(json.dumps({
    "ops": ops,
    "timeouts": timeouts,
    "p99": latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
    "max": latencies[-1] if latencies else 0.0,
}), flush=True)
"""


def _build_cache(driver: Driver, victims: int, keep: int) -> None:
    """``victims`` old sparse images and ``keep`` recent ones, rows in one go."""
    rows = []
    for i in range(victims):
        name = f"old-{i:05d}"
        with open(Path(driver.base_dir) / name, "wb") as f:
            f.truncate(1024)
        rows.append((name, 1000.0 + i, 1000.0, 1024))
    for i in range(keep):
        name = f"keep-{i}"
        with open(Path(driver.base_dir) / name, "wb") as f:
            f.truncate(1024)
        rows.append((name, 2_000_000_000.0 + i, 1000.0, 1024))
    with driver.db.writing() as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, size)"
            " VALUES (?, ?, ?, ?)",
            rows,
        )


def test_s50_glance_style_writer_never_times_out_during_prune(tmp_path: Path) -> None:
    durations: list[float] = []
    driver = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")), txn_observer=durations.append)
    driver.configure()
    _build_cache(driver, victims=1000, keep=50)
    stop = tmp_path / "stop"

    writer = subprocess.Popen(
        [sys.executable, "-c", GLANCE_STYLE_WRITER, driver.db_path, str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        result = run_prune(driver, PrunePolicy(max_size=50 * 1024))  # default batching and pauses
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=30)
    report = json.loads(out.strip().splitlines()[-1])

    assert report["timeouts"] == 0, report
    assert report["ops"] > 0
    assert report["max"] < 2.0, report
    assert result.pruned_images == 1000
    assert all(name.startswith("old-") for name in result.images)
    assert not any(Path(driver.base_dir, f"old-{i:05d}").exists() for i in range(1000))
    # every write transaction we opened stayed far below Glance's 2 s budget
    assert durations and max(durations) < 1.0, max(durations)
