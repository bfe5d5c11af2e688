"""Crash safety of prune on a centralized_db cache: seeded SIGKILLs on real PostgreSQL.

Issue 11 section 4, the recipe of ``test_crash_safety.py`` on the second
store: each trial builds node A's cache (files, and rows in Glance's
``cached_images`` on a ``db sync``-ed PostgreSQL database, beside node B's
rows) and runs ``prune`` through the real CLI as a subprocess with
``GLANCE_CACHE_AGENT_TEST_KILL_AT=POINT:N``: it SIGKILLs itself on its N-th
pass through that crash point (after a victim's unlink; inside a row batch's
transaction, its DELETE run, before COMMIT; just after the COMMIT). Trial k
takes the k-th kind of point with a seeded N, so every kind is killed in
every run. Then, for every trial:

1. the kill left exactly what its point implies: the first N victims' files
   gone, the rows of the committed batches gone, nothing else;
2. no image file without a row, except the orphans the trial made on
   purpose: prune unlinks before it deletes rows, so a kill leaves rows
   without files, never files without rows;
3. node B's rows are untouched;
4. the next run converges: a reconcile (adopting the orphans, dropping the
   phantom rows) then a prune, fresh CLI runs, leave files and rows equal and
   the cache at or under its limit, node B still untouched.

``random.Random(SEED_BASE + trial)`` decides the cache and the kill point.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from glance_cache_agent.driver import CacheSettings
from glance_cache_agent.driver.centralized import CentralizedDriver, open_centralized_driver
from glance_cache_agent.driver.crashpoints import ENV as KILL_AT
from glance_cache_agent.maintenance import PrunePolicy, run_prune
from tests.helpers.centralized import raw, utc
from tests.helpers.cli import clean_env
from tests.helpers.dbservers import register_node

pytestmark = pytest.mark.slow

SEED_BASE = 0x11C0DB  # trial n uses random.Random(SEED_BASE + n)
TRIALS = 9
NODE_B = "http://node-b.example:9292"
DAY = 86400.0
#: a hang guard for one CLI run, not a timing expectation
RUN_TIMEOUT = 120.0
NOW = 1772366400.0  # 2026-03-01 12:00:00 UTC: rows' times are before it


@dataclass(frozen=True)
class Kill:
    """SIGKILL on pass ``n`` through ``point``; what must be gone afterwards."""

    point: str
    n: int
    files_gone: int
    rows_gone: int

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.n}"


def kill_point(trial: int, victims: int, batch: int, rng: random.Random) -> Kill:
    """Trial ``trial``'s kill: the kinds in turn, N seeded. Rows go per
    batch, after the batch's files: a batch's rows are gone once it committed."""
    batches = math.ceil(victims / batch)
    kind = trial % 3
    if kind == 0:  # after the n-th unlink: the batches before n's committed
        n = rng.randint(1, victims)
        return Kill("prune:unlinked", n, n, batch * ((n - 1) // batch))
    if kind == 1:  # inside batch k's row transaction, before COMMIT
        k = rng.randint(1, batches)
        return Kill("db:commit", k, min(victims, k * batch), (k - 1) * batch)
    k = rng.randint(1, batches - 1)  # just after batch k's COMMIT
    return Kill("db:committed", k, k * batch, k * batch)


def rows_of(url: str, node_id: int) -> dict[str, tuple[Any, ...]]:
    """A node's rows: image_id -> every column."""
    with raw(url) as conn:
        result = conn.execute(
            text("SELECT * FROM cached_images WHERE node_reference_id = :n ORDER BY id"),
            {"n": node_id},
        )
        return {r.image_id: tuple(r) for r in result}


def insert_rows(url: str, node_id: int, rows: list[tuple[str, float, int, int]]) -> None:
    """``(image_id, last_accessed, size, hits)`` rows as Glance writes them, one transaction."""
    with raw(url) as conn:
        conn.execute(
            text(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits,"
                " checksum, node_reference_id) VALUES (:i, :t, :m, :s, :h, NULL, :n)"
            ),
            [
                {"i": i, "t": utc(t), "m": utc(t - 3600), "s": s, "h": h, "n": node_id}
                for i, t, s, h in rows
            ],
        )


def new_id(rng: random.Random) -> str:
    """A seeded UUID image id."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def write_file(path: Path, size: int) -> None:
    path.write_bytes(b"i" * size)


@dataclass
class Trial:
    """One trial's node A: its cache dir, rows, config and planned victims."""

    root: Path
    url: str
    driver: CentralizedDriver
    max_size: int
    batch: int
    orphans: set[str]
    victims: list[str]

    def files(self) -> dict[str, int]:
        return {info.name: info.size for info in self.driver.iter_image_files()}

    def row_ids(self) -> set[str]:
        return set(rows_of(self.url, self.driver.store.node_id))

    def cli(self, *args: str, kill: Kill | None = None) -> subprocess.CompletedProcess[str]:
        """The agent CLI on node A (``--json``), SIGKILLing itself at ``kill``."""
        config = self.root / "agent.yaml"
        config.write_text(
            f"cache:\n  dir: {self.driver.base_dir}\n  driver: centralized_db\n"
            f"  database: '{self.url}'\n  node_url: {self.driver.node_url}\n"
            f"  max_size: {self.max_size}\n"
            f"prune:\n  batch_size: {self.batch}\n  batch_pause: 0s\n  time_budget: 1h\n"
            "reconcile:\n  orphan_grace: 0s\n  orphans: adopt\n"
            f"agent:\n  runtime_dir: {self.root / 'run'}\n  lock_timeout: 10s\n"
            "  glance_lock_timeout: 10s\n"
            "logging:\n  level: warning\n"
        )
        env = clean_env() if kill is None else clean_env(**{KILL_AT: kill.spec})
        return subprocess.run(
            [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(config), *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=RUN_TIMEOUT,
            check=False,
        )


def build(root: Path, url: str, trial: int, rng: random.Random) -> Trial:
    """Node A: 40 images (files and rows, varied last_accessed, some ties), a few orphans."""
    node_url = f"http://node-a-{trial}.example:9292"
    register_node(url, node_url)
    driver = open_centralized_driver(CacheSettings(cache_dir=str(root / "cache")), url, node_url)
    assert isinstance(driver, CentralizedDriver)
    driver.set_paths()
    rows = []
    accessed = NOW - DAY
    for _ in range(40):
        image_id = new_id(rng)
        size = rng.randint(1024, 8192)
        write_file(Path(driver.base_dir, image_id), size)
        accessed = accessed if rng.random() < 0.1 else NOW - rng.uniform(0, 30 * DAY)
        rows.append((image_id, accessed, size, rng.randint(0, 9)))
    insert_rows(url, driver.store.node_id, rows)
    orphans = {new_id(rng) for _ in range(rng.randint(1, 3))}
    for image_id in orphans:
        write_file(Path(driver.base_dir, image_id), rng.randint(512, 2048))
    total = sum(info.size for info in driver.iter_image_files())
    max_size = int(total * rng.uniform(0.4, 0.6))
    batch = rng.choice([3, 4, 5])
    plan = run_prune(driver, PrunePolicy(max_size=max_size, batch_size=batch), dry_run=True)
    assert len(plan.images) > 2 * batch
    return Trial(root, url, driver, max_size, batch, orphans, plan.images)


def run_trial(tmp_path: Path, url: str, node_b: int, trial: int) -> list[str]:
    """One seeded kill and the checks after it: the violations found."""
    rng = random.Random(SEED_BASE + trial)
    root = tmp_path / f"trial-{trial}"
    root.mkdir()
    t = build(root, url, trial, rng)
    kill = kill_point(trial, len(t.victims), t.batch, rng)
    before_b = rows_of(url, node_b)
    violations = []
    try:
        killed = t.cli("prune", kill=kill)
        if killed.returncode != -signal.SIGKILL:
            violations.append(f"{kill.spec}: exit {killed.returncode}: {killed.stderr[-300:]}")
        files, rows = t.files(), t.row_ids()
        gone = [v for v in t.victims if v not in files]
        if gone != t.victims[: kill.files_gone]:
            violations.append(f"{kill.spec}: files gone {len(gone)} != {kill.files_gone}")
        if sorted(set(t.victims) - rows) != sorted(t.victims[: kill.rows_gone]):
            violations.append(f"{kill.spec}: rows gone != {kill.rows_gone}")
        rowless = set(files) - rows - t.orphans
        if rowless:
            violations.append(f"{kill.spec}: {len(rowless)} file(s) without a row")
        if rows_of(url, node_b) != before_b:
            violations.append(f"{kill.spec}: node B's rows changed")

        for command in ("reconcile", "prune"):
            done = t.cli(command)
            if done.returncode != 0:
                violations.append(f"next {command}: exit {done.returncode}: {done.stderr[-300:]}")
        files, rows = t.files(), t.row_ids()
        if set(files) != rows:
            violations.append("after reconcile and prune, files and rows differ")
        if sum(files.values()) > t.max_size:
            violations.append(f"after the next prune {sum(files.values())} > {t.max_size}")
        if rows_of(url, node_b) != before_b:
            violations.append("node B's rows changed by the next run")
    finally:
        t.driver.close()
    return [f"trial {trial}: {v}" for v in violations]


@pytest.mark.parametrize("glance_db", ["postgresql"], indirect=True)
def test_sigkill_during_prune_keeps_rows_for_every_file(tmp_path: Path, glance_db: str) -> None:
    node_b = register_node(glance_db, NODE_B)
    shared = [str(uuid.UUID(int=n, version=4)) for n in range(1, 6)]
    insert_rows(glance_db, node_b, [(i, NOW - DAY, 4096, 3) for i in shared])
    only = os.environ.get("GLANCE_CACHE_AGENT_CRASH_TRIALS")
    trials = [int(n) for n in only.split(",")] if only else range(TRIALS)
    violations = [v for trial in trials for v in run_trial(tmp_path, glance_db, node_b, trial)]
    report = {"trials": len(trials), "violations": violations}
    print("centralized crash safety:", json.dumps(report))
    assert violations == []
