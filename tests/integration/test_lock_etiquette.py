"""Scenario 50: the agent's writes leave Glance's ``timeout=0`` writers a turn.

Glance's connections use ``timeout=0`` and retry every 50 ms for 2 s, then
raise ``TimeoutError``: whatever lock the agent holds for long makes Glance
fail. Whether a free-running writer happens to lose that race is luck (and
load); the properties that decide it are checked here deterministically:

* every agent write transaction changes at most ``BATCH_ROWS`` rows (counted
  by triggers on ``cached_images``, read at each ``txn_observer`` call);
* no lock is held across file I/O: at every ``unlink`` and ``fsync`` the
  agent makes, a Glance-style writer process (``timeout=0``, no retry) does
  one write and it must succeed at the first attempt;
* between prune batches the lock is free: the pause callback hands the same
  writer one write, which must succeed at the first attempt.

How long Glance's writers actually wait beside a prune (worst, p99) is a
figure, not an assertion: ``make bench`` measures it
(``bench/bench_lock_etiquette.py``).
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.driver import Driver
from glance_cache_agent.driver.sqlite_store import BATCH_ROWS
from glance_cache_agent.maintenance import (
    OrphanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_prune,
    run_reconcile,
)

#: ids of the rows the Glance-style writer inserts and updates (the triggers
#: that count the agent's changes ignore them)
GLANCE_PREFIX = "99999999-"

# Like Glance's SqliteConnection (timeout=0, the two PRAGMAs, default
# isolation: the INSERT or UPDATE takes the write lock, commit() needs the
# exclusive one), but one attempt only: on a free lock Glance's first attempt
# succeeds, so "locked" here means the agent held a lock at that moment.
# Each line on stdin asks for one write; the answer is "ok" or the error.
GLANCE_STYLE_WRITER = r"""
import sqlite3, sys, time

db_path, prefix = sys.argv[1], sys.argv[2]
print("ready", flush=True)
n = 0
for _line in sys.stdin:
    n += 1
    image_id = "%s0000-4000-8000-%012x" % (prefix, (n + 1) // 2)
    conn = sqlite3.connect(db_path, timeout=0)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        if n % 2:  # a commit of a freshly cached image ...
            conn.execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
                " VALUES (?, ?, ?, 0, 1)", (image_id, time.time(), time.time()))
        else:  # ... and a hit on it
            conn.execute(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                (time.time(), image_id))
        conn.commit()
        answer = "ok"
    except sqlite3.Error as exc:
        answer = "failed: %s" % exc
    finally:
        conn.close()
    print(answer, flush=True)
"""


class GlanceWriter:
    """The writer process; ``write(why)`` makes it do one write, now."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GLANCE_STYLE_WRITER, db_path, GLANCE_PREFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.answers: list[tuple[str, str]] = []
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def write(self, why: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("write\n")
        self.proc.stdin.flush()
        self.answers.append((why, self._read()))

    def failures(self) -> list[tuple[str, str]]:
        return [(why, answer) for why, answer in self.answers if answer != "ok"]

    def rows(self) -> tuple[int, int]:
        """``(rows, hits)`` the writer's commits left in ``cached_images``."""
        with sqlite3.connect(self.db_path) as conn:
            count, hits = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM cached_images WHERE image_id LIKE ?",
                (GLANCE_PREFIX + "%",),
            ).fetchone()
        return int(count), int(hits)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class ChangeCounter:
    """Rows of ``cached_images`` the agent changes in each write transaction.

    Triggers append one row to ``test_changes`` per inserted, updated or
    deleted row (the writer's own rows excepted); the driver's
    ``txn_observer`` is called after every COMMIT or ROLLBACK, when the lock
    is free again, and records how many changes that transaction added.
    """

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.per_txn: list[int] = []
        self._seen = 0
        skip = f"'{GLANCE_PREFIX}%'"
        with sqlite3.connect(db_path) as conn:
            conn.execute("CREATE TABLE test_changes (n INTEGER)")
            for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                conn.execute(
                    f"CREATE TRIGGER test_count_{event.lower()} AFTER {event} ON cached_images"
                    f" WHEN {row}.image_id NOT LIKE {skip}"
                    " BEGIN INSERT INTO test_changes VALUES (1); END"
                )

    def _total(self) -> int:
        conn = sqlite3.connect(self.db_path)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM test_changes").fetchone()[0])
        finally:
            conn.close()

    def observe(self, _held_seconds: float) -> None:
        total = self._total()
        self.per_txn.append(total - self._seen)
        self._seen = total


def _sparse(path: Path, size: int = 1024) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _uuid(prefix: str, n: int) -> str:
    return str(uuid.UUID(f"{prefix}0000-4000-8000-{n:012x}"))


def _insert(driver: Driver, rows: list[tuple[str, float, float, int]]) -> None:
    with driver.db.writing() as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, size)"
            " VALUES (?, ?, ?, ?)",
            rows,
        )


@pytest.fixture
def writer(cache: Driver) -> Iterator[GlanceWriter]:
    glance = GlanceWriter(cache.db_path)
    try:
        yield glance
    finally:
        glance.close()


def _counted(cache: Driver) -> tuple[Driver, ChangeCounter]:
    """A driver on the built cache whose write transactions are counted from now on."""
    counter = ChangeCounter(cache.db_path)
    return Driver(cache.settings, txn_observer=counter.observe), counter


def _probe_file_io(monkeypatch: pytest.MonkeyPatch, writer: GlanceWriter) -> None:
    """Before every unlink and fsync, the writer must get the lock at once."""

    def probing(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            writer.write(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "unlink", probing("unlink", os.unlink))
    monkeypatch.setattr(os, "fsync", probing("fsync", os.fsync))


def test_s50_prune_batches_are_short_transactions_and_glance_writes_between(
    cache: Driver, writer: GlanceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    victims = [_uuid("00000000-", i) for i in range(2 * BATCH_ROWS + 7)]  # full, full, partial
    keep = [_uuid("ffffffff-", i) for i in range(50)]
    for name in (*victims, *keep):
        _sparse(Path(cache.base_dir, name))
    _insert(
        cache,
        [(v, 1000.0 + i, 1000.0, 1024) for i, v in enumerate(victims)]
        + [(k, 2_000_000_000.0 + i, 1000.0, 1024) for i, k in enumerate(keep)],
    )
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the production pause, replaced by Glance's turn
        pauses.append(seconds)
        writer.write("pause")

    driver, counter = _counted(cache)
    _probe_file_io(monkeypatch, writer)
    policy = PrunePolicy(max_size=len(keep) * 1024)  # production batch size and pause
    result = run_prune(driver, policy, pause=pause)
    monkeypatch.undo()

    assert result.pruned_images == len(victims) and result.errors == []
    assert sorted(result.images) == victims
    assert not any(Path(driver.base_dir, v).exists() for v in victims)
    assert all(Path(driver.base_dir, k).exists() for k in keep)
    # Glance got the lock at once at every unlink, every fsync and every pause
    assert writer.failures() == []
    # one short transaction per batch (the writability probe changes no row)
    batches = math.ceil(len(victims) / policy.batch_size)
    assert max(counter.per_txn) <= min(policy.batch_size, BATCH_ROWS), counter.per_txn
    assert len([n for n in counter.per_txn if n]) == batches, counter.per_txn
    assert sum(counter.per_txn) == len(victims)
    assert pauses == [policy.batch_pause] * (batches - 1)
    whys = [why for why, _answer in writer.answers]
    assert (whys.count("unlink"), whys.count("pause")) == (len(victims), batches - 1)
    assert whys.count("fsync") >= batches
    assert writer.rows() == ((len(whys) + 1) // 2, len(whys) // 2)  # no Glance write lost


def test_s50_reconcile_writes_in_batches_and_never_across_file_io(
    cache: Driver, writer: GlanceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphans = [_uuid("10000000-", i) for i in range(BATCH_ROWS + 3)]
    phantoms = [_uuid("20000000-", i) for i in range(2 * BATCH_ROWS + 1)]
    drifted = [_uuid("30000000-", i) for i in range(BATCH_ROWS + 1)]
    queued = [_uuid("40000000-", i) for i in range(5)]  # stale queue entries: unlinked
    for name in (*orphans, *drifted, *queued):
        _sparse(Path(cache.base_dir, name))
    for name in queued:
        _sparse(Path(cache.base_dir, "queue", name), 0)
    _insert(
        cache,
        [(p, 1000.0, 1000.0, 1024) for p in phantoms]
        + [(d, 1000.0, 1000.0, 7) for d in drifted]
        + [(q, 1000.0, 1000.0, 1024) for q in queued],
    )
    driver, counter = _counted(cache)
    _probe_file_io(monkeypatch, writer)
    result = run_reconcile(driver, ReconcilePolicy(orphan_grace=0, orphans=OrphanPolicy.ADOPT))
    monkeypatch.undo()

    assert (result.orphans_adopted, result.phantoms_removed, result.sizes_fixed) == (
        len(orphans),
        len(phantoms),
        len(drifted),
    )
    assert result.queue_entries_removed == len(queued) and result.errors == []
    assert writer.failures() == []
    assert max(counter.per_txn) <= BATCH_ROWS, counter.per_txn
    assert sum(counter.per_txn) == len(orphans) + len(phantoms) + len(drifted)
    assert [why for why, _answer in writer.answers].count("unlink") == len(queued)
