"""Crash safety: SIGKILL the agent at known points of prune, clean and reconcile.

Issue 6 section 2, following the recipe in performance-and-reliability.md
section 4.2: each trial builds a real cache (small files, rows inserted in
one transaction) and starts the maintenance run through the real CLI as a
subprocess with ``GLANCE_CACHE_AGENT_TEST_KILL_AT=POINT:N``: the run SIGKILLs
itself on its N-th pass through that crash point
(``glance_cache_agent/driver/crashpoints.py``). Each task has a list of
points covering every step (after an unlink and before its row goes, mid
batch, inside a row transaction, just after one, between the two phases of
clean...); trial k of a task takes the k-th (cycling, seeded values where a
point has a range), so every step is killed in every full run, whatever the
machine's speed. A run that exits without being killed is a failure (its
point was never reached), and so is a kill whose leftovers do not match the
point (e.g. after ``prune:unlinked:7`` exactly 7 victim files are gone).
Then, for every trial:

1. ``PRAGMA integrity_check`` is ``ok`` (SQLite rolls back a hot journal);
2. every image file has a row, unless it is one of the orphans the trial
   created on purpose (all files predate the run, so "younger than
   ``orphan_grace``" can only mean those);
3. after one reconcile no row points to a missing file (and every file has
   a row: the follow-up reconcile adopts with a zero grace);
4. the next prune, a fresh CLI run (which also proves the killed run's
   maintenance and Glance locks died with it), converges to size <= target.

Plus per-task checks: clean never touches the base directory or a live
``incomplete/`` file; reconcile never deletes a file that has a row.

Every trial is reproducible from its number: ``random.Random(SEED_BASE +
trial)`` decides the cache, the policy knobs and the kill point. Run a few
trials only with ``GLANCE_CACHE_AGENT_CRASH_TRIALS=3,17``. With
``GLANCE_CACHE_AGENT_RELIABILITY_REPORT=PATH`` the counts are written to
``PATH.crash.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.driver import CacheSettings, Driver
from glance_cache_agent.driver.crashpoints import ENV as KILL_AT
from glance_cache_agent.maintenance import (
    OrphanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_prune,
    run_reconcile,
)

pytestmark = pytest.mark.slow

SEED_BASE = 0x6C0A5E  # trial n uses random.Random(SEED_BASE + n)
TRIALS = (("prune", 20), ("clean", 15), ("reconcile", 15))
#: a hang guard for one killed run, not a timing expectation
RUN_TIMEOUT = 120.0
HOUR = 3600.0
STALLED = 120  # clean trials: stalled incomplete files
DAY = 86400.0


# ----------------------------------------------------------------- helpers


def _image_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _write(path: Path, size: int, mtime: float | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"i" * size)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _insert_rows(db_path: str, rows: list[tuple[str, float, float, int, int]]) -> None:
    """``(image_id, last_accessed, last_modified, size, hits)`` in one transaction."""
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        conn.close()


def _row_ids(db_path: str) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {r[0] for r in conn.execute("SELECT image_id FROM cached_images")}
    finally:
        conn.close()


def _rows(db_path: str) -> dict[str, tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT * FROM cached_images")}
    finally:
        conn.close()


def _integrity(db_path: str) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _files(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Regular files directly in ``directory``: name -> (size, mtime_ns, inode)."""
    found = {}
    with os.scandir(directory) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found[entry.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def _image_stats(driver: Driver) -> dict[str, tuple[int, float, int]]:
    """Image files of the base directory: id -> (size, mtime, inode)."""
    return {info.name: (info.size, info.mtime, info.inode) for info in driver.iter_image_files()}


def _image_files(driver: Driver) -> dict[str, int]:
    """Image files of the base directory: id -> size (lock files, db excluded)."""
    return {info.name: info.size for info in driver.iter_image_files()}


@dataclass(frozen=True)
class KillPoint:
    """The run SIGKILLs itself on pass ``n`` through crash point ``point``."""

    label: str
    point: str
    n: int
    #: counts the kill must leave (checked before any repair), e.g. files removed
    expect: dict[str, int] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.n}"


def _pick(points: list[KillPoint], k: int) -> KillPoint:
    """Trial ``k`` of a task takes the k-th point, cycling through the list."""
    return points[k % len(points)]


@dataclass
class Cache:
    """One trial's cache and what the trial knows about it."""

    root: Path
    driver: Driver
    max_size: int
    #: image files created without a row on purpose
    orphans: set[str] = field(default_factory=set)
    #: files the killed task must never delete, as (path, (size, mtime_ns, inode))
    keep: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: prune: the planned victims, in eviction order
    victims: list[str] = field(default_factory=list)
    #: clean: invalid and stalled files at the start (all to be removed)
    removable: int = 0
    #: ids whose files must still exist and have rows after the kill
    keep_tracked: set[str] = field(default_factory=set)
    #: rows and base-dir files that the killed task must leave exactly as they were
    frozen_base: tuple[object, object] | None = None
    #: where the run kills itself
    kill: KillPoint | None = None
    config: dict[str, dict[str, object]] = field(default_factory=dict)


def _new_cache(root: Path) -> Driver:
    driver = Driver(CacheSettings(cache_dir=str(root / "cache")))
    driver.configure()
    return driver


def _tracked(
    driver: Driver, rng: random.Random, count: int, now: float, size_range: tuple[int, int]
) -> dict[str, int]:
    """``count`` images with files and rows (varied last_accessed, some ties)."""
    rows = []
    sizes = {}
    previous = now - DAY
    for _ in range(count):
        image_id = _image_id(rng)
        size = rng.randint(*size_range)
        _write(Path(driver.base_dir, image_id), size)
        accessed = previous if rng.random() < 0.1 else now - rng.uniform(0, 30 * DAY)
        previous = accessed
        rows.append((image_id, accessed, accessed - rng.uniform(0, DAY), size, rng.randint(0, 9)))
        sizes[image_id] = size
    _insert_rows(driver.db_path, rows)
    return sizes


def _orphans(driver: Driver, rng: random.Random, count: int) -> set[str]:
    made = set()
    for _ in range(count):
        image_id = _image_id(rng)
        _write(Path(driver.base_dir, image_id), rng.randint(512, 4096))
        made.add(image_id)
    return made


def _phantoms(driver: Driver, rng: random.Random, count: int, now: float) -> None:
    _insert_rows(
        driver.db_path,
        [
            (_image_id(rng), now - rng.uniform(0, 30 * DAY), now - DAY, rng.randint(1, 9999), 0)
            for _ in range(count)
        ],
    )


def _base_config(root: Path, driver: Driver, max_size: int) -> dict[str, dict[str, object]]:
    return {
        "cache": {"dir": driver.base_dir, "max_size": max_size, "stall_time": "1h"},
        "agent": {
            "runtime_dir": str(root / "run"),
            "lock_timeout": "10s",
            "glance_lock_timeout": "10s",
        },
        "logging": {"level": "warning", "format": "json"},
    }


def _prune_points(victims: int, batch: int, rng: random.Random) -> list[KillPoint]:
    """Every step of a batched prune; expectations: victim files and rows gone."""
    batches = math.ceil(victims / batch)

    def unlinked(label: str, n: int) -> KillPoint:
        rows = batch * ((n - 1) // batch)  # the batches before n's are committed
        return KillPoint(label, "prune:unlinked", n, {"files_gone": n, "rows_gone": rows})

    def in_txn(label: str, k: int) -> KillPoint:  # k-th batch's row transaction
        files = min(victims, k * batch)
        return KillPoint(label, "db:commit", k, {"files_gone": files, "rows_gone": (k - 1) * batch})

    def committed(label: str, k: int) -> KillPoint:
        files = min(victims, k * batch)
        return KillPoint(label, "db:committed", k, {"files_gone": files, "rows_gone": files})

    return [
        unlinked("first victim unlinked, its row still there", 1),
        unlinked("mid batch", rng.randint(2, batch - 1)),
        unlinked("a batch's files all unlinked, no row deleted", batch),
        in_txn("inside the first batch's row transaction", 1),
        committed("first batch committed, before the pause", 1),
        unlinked("first unlink of the second batch", batch + 1),
        in_txn("inside a later batch's row transaction", rng.randint(2, batches)),
        committed("a later batch committed", rng.randint(2, batches - 1)),
        unlinked("last victim unlinked, its batch's rows still there", victims),
        in_txn("inside the last row transaction", batches),
    ]


def build_prune(root: Path, rng: random.Random, k: int) -> Cache:
    driver = _new_cache(root)
    now = time.time()
    sizes = _tracked(driver, rng, 300, now, (1024, 8192))
    orphans = _orphans(driver, rng, rng.randint(3, 10))
    _phantoms(driver, rng, rng.randint(5, 20), now)
    total = sum(_image_files(driver).values())
    max_size = int(total * rng.uniform(0.3, 0.7))
    rows = _rows(driver.db_path)
    first_victim = min((rows[i][0], i) for i in sizes)[1]
    cache = Cache(root=root, driver=driver, max_size=max_size, orphans=orphans)
    cache.config = _base_config(root, driver, max_size)
    batch = rng.choice([3, 5, 8])
    cache.config["prune"] = {
        "batch_size": batch,
        "batch_pause": rng.choice(["2ms", "3ms", "5ms"]),
        "time_budget": "1h",
    }
    plan = run_prune(driver, PrunePolicy(max_size=max_size, batch_size=batch), dry_run=True)
    assert plan.images[0] == first_victim and len(plan.images) > 2 * batch
    cache.victims = plan.images
    cache.kill = _pick(_prune_points(len(plan.images), batch, rng), k)
    return cache


def _clean_points(invalid: int, stalled: int, rng: random.Random) -> list[KillPoint]:
    """Invalid files go first (name order), then the settle pause, then stalled ones."""

    def removed(label: str, n: int) -> KillPoint:
        return KillPoint(label, "remove", n, {"files_removed": n})

    return [
        removed("first invalid file removed", 1),
        removed("mid invalid files", rng.randint(2, invalid - 1)),
        removed("every invalid file removed, before the settle pause", invalid),
        removed("first stalled file removed", invalid + 1),
        removed("mid stalled files", rng.randint(invalid + 2, invalid + stalled - 1)),
        removed("last stalled file removed", invalid + stalled),
    ]


def build_clean(root: Path, rng: random.Random, k: int) -> Cache:
    driver = _new_cache(root)
    now = time.time()
    sizes = _tracked(driver, rng, 150, now, (1024, 8192))
    orphans = _orphans(driver, rng, rng.randint(0, 5))
    invalid = Path(driver.base_dir, "invalid")
    incomplete = Path(driver.base_dir, "incomplete")
    invalid_ids = sorted(_image_id(rng) for _ in range(120))
    for image_id in invalid_ids:
        _write(invalid / image_id, rng.randint(256, 4096), now - rng.uniform(0, 2 * DAY))
    for _ in range(STALLED):  # stalled: older than stall_time (1h)
        _write(
            incomplete / _image_id(rng), rng.randint(256, 4096), now - rng.uniform(2 * HOUR, DAY)
        )
    for _ in range(20):  # live downloads: must survive
        _write(incomplete / _image_id(rng), rng.randint(256, 4096), now - rng.uniform(0, 600))
    max_size = int(sum(sizes.values()) * rng.uniform(0.4, 0.8))
    cache = Cache(root=root, driver=driver, max_size=max_size, orphans=orphans)
    cache.keep = {
        str(incomplete / name): st
        for name, st in _files(incomplete).items()
        if st[1] / 1e9 > now - HOUR
    }
    cache.frozen_base = (_image_stats(driver), _rows(driver.db_path))
    cache.config = _base_config(root, driver, max_size)
    cache.config["clean"] = {
        "settle_time": rng.choice(["20ms", "50ms", "80ms"]),
        "invalid_grace": 0,
    }
    cache.removable = len(invalid_ids) + STALLED
    cache.kill = _pick(_clean_points(len(invalid_ids), STALLED, rng), k)
    return cache


def _reconcile_points(
    mode: str, orphans: int, phantoms: int, queue: int, rng: random.Random
) -> list[KillPoint]:
    """Orphans first (adopted in row batches, or removed), then phantom and size
    batches, then stale queue entries. ``txns`` counts the write transactions."""
    txns = math.ceil(phantoms / 500) + 1 + (math.ceil(orphans / 500) if mode == "adopt" else 0)
    removed_orphans = orphans if mode == "delete" else 0
    points = [
        KillPoint("inside the first row transaction", "db:commit", 1),
        KillPoint("first row transaction committed", "db:committed", 1),
        KillPoint("inside a later row transaction", "db:commit", rng.randint(2, txns)),
        KillPoint("a stale queue entry removed", "remove", removed_orphans + rng.randint(1, queue)),
    ]
    if mode == "delete":
        points.insert(0, KillPoint("an orphan removed", "remove", rng.randint(1, orphans)))
    return points


def build_reconcile(root: Path, rng: random.Random, k: int) -> Cache:
    driver = _new_cache(root)
    now = time.time()
    sizes = _tracked(driver, rng, 250, now, (1024, 4096))
    orphans = _orphans(driver, rng, rng.randint(300, 700))
    phantoms = rng.randint(300, 1000)
    _phantoms(driver, rng, phantoms, now)
    # rows whose size disagrees with the file
    conn = sqlite3.connect(driver.db_path)
    with conn:
        conn.executemany(
            "UPDATE cached_images SET size = size + 7 WHERE image_id = ?",
            [(i,) for i in rng.sample(sorted(sizes), 40)],
        )
    conn.close()
    queue = Path(driver.base_dir, "queue")
    for image_id in rng.sample(sorted(sizes), 20):  # stale queue entries of cached images
        _write(queue / image_id, 0)
    for _ in range(10):  # queued, not cached: must stay
        _write(queue / _image_id(rng), 0)
    total = sum(_image_files(driver).values())
    max_size = int(total * rng.uniform(0.4, 0.8))
    cache = Cache(root=root, driver=driver, max_size=max_size, orphans=orphans)
    cache.keep_tracked = set(sizes)
    cache.keep = {
        str(queue / name): st
        for name, st in _files(queue).items()
        if not os.path.exists(os.path.join(driver.base_dir, name))
    }
    cache.config = _base_config(root, driver, max_size)
    mode = ("adopt", "delete", "report")[k % 3]
    cache.config["reconcile"] = {
        "orphan_grace": 0,  # every deliberate orphan is past the grace: act on it
        "orphans": mode,
    }
    points = _reconcile_points(mode, len(orphans), phantoms, 20, rng)
    cache.kill = _pick(points, k // 3)
    return cache


BUILDERS = {"prune": build_prune, "clean": build_clean, "reconcile": build_reconcile}


def _write_config(cache: Cache, name: str, config: dict[str, dict[str, object]]) -> str:
    path = cache.root / name
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return str(path)


def _cli(config_path: str, task: str) -> list[str]:
    return [sys.executable, "-m", "glance_cache_agent.cli", "-c", config_path, task, "--json"]


# ------------------------------------------------------------------ a trial


@dataclass
class Outcome:
    task: str
    trial: int
    seed: int
    kill_at: str
    kill_label: str
    killed: bool
    violations: list[str]


def _landed(task: str, cache: Cache) -> dict[str, int]:
    """The counts a kill point's ``expect`` speaks of, as the kill left them."""
    driver = cache.driver
    if task == "prune":
        files, rows = _image_files(driver), _row_ids(driver.db_path)
        return {
            "files_gone": sum(v not in files for v in cache.victims),
            "rows_gone": sum(v not in rows for v in cache.victims),
        }
    if task == "clean":
        left = len(_files(Path(driver.base_dir, "invalid")))
        left += len(_files(Path(driver.base_dir, "incomplete"))) - len(cache.keep)
        return {"files_removed": cache.removable - left}
    return {}


def run_trial(base: Path, task: str, trial: int, index: int) -> Outcome:
    seed = SEED_BASE + trial
    rng = random.Random(seed)
    root = base / f"{task}-{trial}"
    root.mkdir()
    cache = BUILDERS[task](root, rng, index)
    driver = cache.driver
    assert cache.kill is not None
    violations: list[str] = []

    config_path = _write_config(cache, "killed.yaml", cache.config)
    env = {**os.environ, KILL_AT: cache.kill.spec}
    run = subprocess.run(_cli(config_path, task), capture_output=True, env=env, timeout=RUN_TIMEOUT)
    killed = run.returncode == -signal.SIGKILL
    if not killed:
        violations.append(
            f"{cache.kill.spec} ({cache.kill.label}) never reached: the run exited"
            f" {run.returncode}: {run.stderr[-500:]!r}"
        )
    landed = _landed(task, cache)
    if landed != cache.kill.expect:
        violations.append(f"{cache.kill.spec}: the kill left {landed}, not {cache.kill.expect}")

    # 1. the database survived (opening it rolls back any hot journal)
    integrity = _integrity(driver.db_path)
    if integrity != ["ok"]:
        violations.append(f"integrity_check: {integrity[:5]}")

    # 2. every image file has a row, except orphans the trial made on purpose
    files = _image_files(driver)
    rows = _row_ids(driver.db_path)
    rowless = set(files) - rows - cache.orphans
    if rowless:
        violations.append(f"{len(rowless)} file(s) without a row: {sorted(rowless)[:3]}")

    # per-task: what the killed run must never have touched
    for path, st in cache.keep.items():
        try:
            now_st = os.lstat(path)
        except FileNotFoundError:
            violations.append(f"deleted a file it must keep: {path}")
            continue
        if (now_st.st_size, now_st.st_mtime_ns, now_st.st_ino) != st:
            violations.append(f"changed a file it must keep: {path}")
    for image_id in cache.keep_tracked:
        if image_id not in files:
            violations.append(f"deleted tracked image {image_id}")
        elif image_id not in rows:
            violations.append(f"dropped the row of present image {image_id}")
    if cache.frozen_base is not None and (
        (_image_stats(driver), _rows(driver.db_path)) != cache.frozen_base
    ):
        violations.append("clean changed the base directory or the rows")

    # 3. one reconcile: no row without a file (and, with a zero grace, no file without a row)
    try:
        run_reconcile(
            driver, ReconcilePolicy(orphan_grace=0.0, orphans=OrphanPolicy.ADOPT), lock_timeout=10
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        violations.append(f"reconcile after the kill failed: {exc!r}")
    files = _image_files(driver)
    rows = _row_ids(driver.db_path)
    if rows - set(files):
        violations.append(f"after reconcile, {len(rows - set(files))} row(s) without a file")
    if set(files) - rows:
        violations.append(f"after reconcile, {len(set(files) - rows)} file(s) without a row")

    # 4. the next prune, a fresh CLI run, converges to size <= target
    follow = dict(cache.config)
    follow["prune"] = {"batch_size": 500, "batch_pause": 0}
    follow_path = _write_config(cache, "converge.yaml", follow)
    done = subprocess.run(_cli(follow_path, "prune"), capture_output=True, timeout=60)
    if done.returncode != 0:
        violations.append(f"next prune exited {done.returncode}: {done.stderr[-500:]!r}")
    else:
        result = json.loads(done.stdout)
        if result["size_after"] > cache.max_size:
            violations.append(f"next prune stopped at {result['size_after']} > {cache.max_size}")
    size = sum(_image_files(driver).values())
    if size > cache.max_size:
        violations.append(f"after the next prune the cache holds {size} > {cache.max_size}")
    files = _image_files(driver)
    rows = _row_ids(driver.db_path)
    if set(files) != rows:
        violations.append("after the next prune, files and rows disagree")
    if _integrity(driver.db_path) != ["ok"]:
        violations.append("integrity_check failed after the next prune")

    shutil.rmtree(root)
    return Outcome(
        task=task,
        trial=trial,
        seed=seed,
        kill_at=cache.kill.spec,
        kill_label=cache.kill.label,
        killed=killed,
        violations=violations,
    )


def _selected() -> list[tuple[str, int, int]]:
    """``(task, trial, index of the trial within its task)``."""
    plan = []
    trial = 0
    for task, count in TRIALS:
        for index in range(count):
            plan.append((task, trial, index))
            trial += 1
    only = os.environ.get("GLANCE_CACHE_AGENT_CRASH_TRIALS")
    if only:
        wanted = {int(n) for n in only.split(",") if n.strip()}
        plan = [p for p in plan if p[1] in wanted]
    return plan


def test_sigkill_during_maintenance_keeps_invariants(tmp_path: Path) -> None:
    started = time.monotonic()
    outcomes = [run_trial(tmp_path, *selected) for selected in _selected()]
    elapsed = time.monotonic() - started

    per_task: dict[str, Counter[str]] = {}
    for o in outcomes:
        c = per_task.setdefault(o.task, Counter())
        c["trials"] += 1
        c["killed_at_their_point"] += o.killed
        c["violations"] += len(o.violations)
    report: dict[str, Any] = {
        "trials": len(outcomes),
        "killed_at_their_point": sum(o.killed for o in outcomes),
        "violations": sum(len(o.violations) for o in outcomes),
        "seconds": round(elapsed, 1),
        "seed_base": SEED_BASE,
        "per_task": {task: dict(c) for task, c in per_task.items()},
        "kill_points": {
            task: sorted({o.kill_label for o in outcomes if o.task == task}) for task in per_task
        },
        "failures": [
            {"task": o.task, "trial": o.trial, "seed": o.seed, "violations": o.violations}
            for o in outcomes
            if o.violations
        ],
    }
    print("crash safety:", json.dumps(report, indent=2))
    target = os.environ.get("GLANCE_CACHE_AGENT_RELIABILITY_REPORT")
    if target:
        Path(target + ".crash.json").write_text(json.dumps(report, indent=2) + "\n")

    assert report["violations"] == 0, json.dumps(report["failures"], indent=2)
    assert report["killed_at_their_point"] == len(outcomes)


def _run_points(spec: str | None) -> subprocess.CompletedProcess[str]:
    """A process passing ``other`` and ``step`` three times each, printing after each round."""
    code = (
        "from glance_cache_agent.driver.crashpoints import crash_point\n"
        "for i in range(3):\n"
        "    crash_point('other'); crash_point('step'); print(i, flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if spec is not None:
        env[KILL_AT] = spec
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT
    )


def test_crash_point_kills_on_the_armed_pass_only() -> None:
    armed = _run_points("step:2")
    assert (armed.returncode, armed.stdout.split()) == (-signal.SIGKILL, ["0"])
    for spec in (None, "", "step:4", "ste:1"):  # off, off, never reached, another point
        done = _run_points(spec)
        assert (done.returncode, done.stdout.split()) == (0, ["0", "1", "2"]), spec
    for bad in ("step", "step:0", "step:x"):
        refused = _run_points(bad)
        assert refused.returncode == 1 and "expected POINT:N" in refused.stderr, bad
