"""Reconcile: orphans, phantom rows, size drift and stale queue entries.

Glance has no reconcile; these tests pin the agent's behaviour from contract
scenarios 15, 46, 55-57 and section 6.3 item 5. Orphan ages are measured
from the newer of mtime and ctime (a rename into place sets ctime), and
ctime cannot be set by ``os.utime``: tests move the clock (``now=`` or
freezegun) relative to the file's real ctime instead.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from freezegun import freeze_time

from glance_cache_agent.driver import Driver
from glance_cache_agent.maintenance import (
    OrphanPolicy,
    ReconcilePolicy,
    execute_reconcile,
    plan_reconcile,
    run_reconcile,
    take_snapshot,
)
from tests.helpers.cache import at, cache_image, full_state, rows, set_row, uid, write_file

KIB = 1024
DAY = 86400
GRACE = 600.0
ORPHAN = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
ORPHAN2 = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"



def base(driver: Driver, name: str) -> Path:
    return Path(driver.base_dir) / name


def settled(*paths: Path) -> float:
    """A moment at which every path has just passed the orphan grace."""
    return max(max(p.stat().st_mtime, p.stat().st_ctime) for p in paths) + GRACE


def delete_row(driver: Driver, image_id: str) -> None:
    """What Glance's rollback does to the row of an already cached image."""
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute("DELETE FROM cached_images WHERE image_id = ?", (image_id,))


# ------------------------------------------------------------------- orphans


def test_s55_orphan_adopted_once_older_than_grace_and_not_before(driver: Driver) -> None:
    """Differs from Glance: a commit whose INSERT timed out leaves ``B/L`` without
    a row forever; reconcile adopts it (row from stat) after the grace."""
    staging = write_file(Path(driver.base_dir) / "incomplete" / ORPHAN, 3000)
    os.utime(staging, (1_700_000_500.0, 1_700_000_000.0))  # atime newer than mtime
    os.rename(staging, base(driver, ORPHAN))  # Glance's commit ... and no INSERT
    path = base(driver, ORPHAN)
    ready = settled(path)
    policy = ReconcilePolicy(orphan_grace=GRACE)

    early = run_reconcile(driver, policy, now=ready - 1)
    assert early.orphans_in_grace == 1
    assert early.orphans_adopted == 0
    assert rows(driver) == {}

    result = run_reconcile(driver, policy, now=ready)
    assert result.orphans_adopted == 1
    assert result.orphans == [ORPHAN]
    assert result.orphan_bytes == 3000
    st = path.stat()
    last_accessed, last_modified, size, hits = rows(driver)[ORPHAN]
    assert size == st.st_size == 3000
    assert last_modified == st.st_mtime == 1_700_000_000.0
    assert last_accessed == max(st.st_atime, st.st_mtime) == 1_700_000_500.0
    assert hits == 0

    again = run_reconcile(driver, policy, now=ready + DAY)
    assert again.orphans_adopted == 0 and again.orphans == []


def test_s55_adopted_last_accessed_is_mtime_when_atime_is_older(driver: Driver) -> None:
    path = write_file(base(driver, ORPHAN), 100)
    os.utime(path, (1_600_000_000.0, 1_700_000_000.0))  # noatime-like: atime stale

    with freeze_time(at(settled(path) + 1)):
        result = run_reconcile(driver, ReconcilePolicy(orphan_grace=GRACE))

    assert result.orphans_adopted == 1
    assert rows(driver)[ORPHAN][:2] == (1_700_000_000.0, 1_700_000_000.0)


def test_s57_failed_recache_orphan_adopted_after_grace(driver: Driver) -> None:
    """Differs from Glance: a failed re-cache deletes the row of a cached image
    and leaves its good file rowless; reconcile adopts it after the grace."""
    cache_image(driver, uid("img-x"), 2048)
    delete_row(driver, uid("img-x"))  # Glance's rollback
    write_file(Path(driver.base_dir) / "invalid" / uid("img-x"), 100)  # the partial
    path = base(driver, uid("img-x"))
    policy = ReconcilePolicy(orphan_grace=GRACE)

    with freeze_time(at(settled(path) - 60)):
        assert run_reconcile(driver, policy).orphans_in_grace == 1
    assert rows(driver) == {}

    with freeze_time(at(settled(path) + 60)):
        result = run_reconcile(driver, policy)
    assert result.orphans_adopted == 1
    assert rows(driver)[uid("img-x")][2:] == (2048, 0)
    assert (Path(driver.base_dir) / "invalid" / uid("img-x")).exists()  # clean's business


def test_orphan_delete_policy(driver: Driver) -> None:
    cache_image(driver, uid("img-kept"), KIB)
    young = write_file(base(driver, ORPHAN2), 500)
    old = write_file(base(driver, ORPHAN), 700)
    now = settled(old)
    os.utime(young, (now + 10, now + 10))  # mtime within the grace

    result = run_reconcile(driver, ReconcilePolicy(orphans=OrphanPolicy.DELETE), now=now)

    assert not old.exists()
    assert young.exists()
    assert result.orphans_removed == 1 and result.orphans == [ORPHAN]
    assert result.orphan_bytes == 700
    assert result.orphans_in_grace == 1
    assert result.orphans_adopted == 0
    assert set(rows(driver)) == {uid("img-kept")}
    assert base(driver, uid("img-kept")).exists()


def test_orphan_report_policy_changes_nothing(driver: Driver) -> None:
    path = write_file(base(driver, ORPHAN), 700)
    now = settled(path)
    lock = base(driver, "glance-cache-prune")
    lock.touch()
    base(driver, "glance-cache-clean").touch()
    before = full_state(driver)

    result = run_reconcile(driver, ReconcilePolicy(orphans=OrphanPolicy.REPORT), now=now)

    assert full_state(driver) == before
    assert result.orphans_reported == 1 and result.orphans == [ORPHAN]
    assert result.orphan_bytes == 700
    assert result.orphans_adopted == result.orphans_removed == 0


@pytest.mark.parametrize("mode", list(OrphanPolicy))
def test_orphans_within_grace_untouched(driver: Driver, mode: OrphanPolicy) -> None:
    path = write_file(base(driver, ORPHAN), 700)
    # an old image renamed into place just now: ctime, not mtime, makes it young
    os.utime(path, (1_600_000_000.0, 1_600_000_000.0))
    now = path.stat().st_ctime + GRACE - 1

    result = run_reconcile(driver, ReconcilePolicy(orphans=mode), now=now)

    assert path.exists()
    assert rows(driver) == {}
    assert result.orphans_in_grace == 1
    assert (result.orphans_adopted, result.orphans_removed, result.orphans_reported) == (0, 0, 0)


def test_default_policy_is_adopt_with_ten_minute_grace() -> None:
    assert ReconcilePolicy() == ReconcilePolicy(orphan_grace=600.0, orphans=OrphanPolicy.ADOPT)


def test_orphan_gaining_a_row_after_planning_is_not_deleted(driver: Driver) -> None:
    """Glance's INSERT lands between our plan and our delete: the file stays."""
    path = write_file(base(driver, ORPHAN), 700)
    policy = ReconcilePolicy(orphans=OrphanPolicy.DELETE)
    plan = plan_reconcile(take_snapshot(driver, now=settled(path)), [], policy)
    assert [i.name for i in plan.orphans] == [ORPHAN]
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
            " VALUES (?, 1.0, 1.0, 0, 700)",
            (ORPHAN,),
        )

    result = execute_reconcile(driver, plan)

    assert path.exists()
    assert result.orphans_removed == 0
    assert ORPHAN in rows(driver)


def test_orphan_adopt_keeps_a_row_glance_inserted_meanwhile(driver: Driver) -> None:
    path = write_file(base(driver, ORPHAN), 700)
    plan = plan_reconcile(take_snapshot(driver, now=settled(path)), [], ReconcilePolicy())
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
            " VALUES (?, 5.0, 5.0, 3, 700)",
            (ORPHAN,),
        )

    result = execute_reconcile(driver, plan)

    assert result.orphans_adopted == 0
    assert rows(driver)[ORPHAN] == (5.0, 5.0, 700, 3)


# ---------------------------------------------------------- phantoms and sizes


def test_phantom_rows_removed(driver: Driver) -> None:
    """Differs from Glance: Glance keeps listing rows without files; reconcile
    removes them (and prune never counts them as pruned)."""
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        cache_image(driver, image_id, KIB)
    base(driver, uid("img-a")).unlink()
    base(driver, uid("img-c")).unlink()

    result = run_reconcile(driver, ReconcilePolicy())

    assert result.phantoms_removed == 2
    assert result.phantoms == [uid("img-a"), uid("img-c")]
    assert set(rows(driver)) == {uid("img-b")}
    assert base(driver, uid("img-b")).exists()


def test_phantom_recached_after_planning_keeps_its_row(driver: Driver) -> None:
    cache_image(driver, uid("img-a"), KIB)
    base(driver, uid("img-a")).unlink()
    plan = plan_reconcile(take_snapshot(driver), [], ReconcilePolicy())
    assert plan.phantoms == [uid("img-a")]
    cache_image(driver, uid("img-a"), 2 * KIB)

    result = execute_reconcile(driver, plan)

    assert result.phantoms_removed == 0
    assert rows(driver)[uid("img-a")][2] == 2 * KIB


def test_s56_recache_over_phantom_row_size_fixed(driver: Driver) -> None:
    """Differs from Glance: Glance's re-cache INSERT fails on the old row, which
    keeps saying 1024; reconcile corrects it from stat."""
    cache_image(driver, uid("r"), KIB)
    base(driver, uid("r")).unlink()
    write_file(base(driver, uid("r")), 2048)  # Glance's re-cache: file renamed in, INSERT fails
    assert rows(driver)[uid("r")][2] == KIB

    result = run_reconcile(driver, ReconcilePolicy())

    assert result.sizes_fixed == 1
    assert rows(driver)[uid("r")][2] == 2048
    assert result.phantoms_removed == 0
    assert driver.get_cache_size() == 2048


def test_sizes_fixed_only_where_wrong(driver: Driver) -> None:
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        cache_image(driver, image_id, KIB)
    set_row(driver, uid("img-a"), size=1)
    set_row(driver, uid("img-c"), size=10**9)
    set_row(driver, uid("img-b"), hits=7)
    before = rows(driver)

    result = run_reconcile(driver, ReconcilePolicy())

    assert result.sizes_fixed == 2
    after = rows(driver)
    assert {k: v[2] for k, v in after.items()} == {
        uid("img-a"): KIB,
        uid("img-b"): KIB,
        uid("img-c"): KIB,
    }
    assert after[uid("img-b")] == before[uid("img-b")]
    assert (
        after[uid("img-a")][:2] == before[uid("img-a")][:2]
        and after[uid("img-a")][3] == before[uid("img-a")][3]
    )


# ------------------------------------------------------------------- queue


def test_queue_entries_for_cached_images_removed(driver: Driver) -> None:
    cache_image(driver, uid("img-a"), KIB)
    cache_image(driver, uid("img-b"), KIB)
    for image_id in (uid("img-a"), uid("img-wanted")):
        (Path(driver.base_dir) / "queue" / image_id).touch()  # img-a: queued after caching
    assert driver.queue_image(uid("img-other"))

    result = run_reconcile(driver, ReconcilePolicy())

    assert result.queue_entries_removed == 1
    assert sorted(driver.get_queued_images()) == [uid("img-other"), uid("img-wanted")]
    assert not driver.is_queued(uid("img-a"))
    assert driver.is_cached(uid("img-a")) and uid("img-a") in rows(driver)


# ------------------------------------------------- what reconcile never touches


@pytest.mark.parametrize("mode", list(OrphanPolicy))
def test_never_touches_locks_db_side_files_or_foreign_names(
    driver: Driver, mode: OrphanPolicy
) -> None:
    never = [
        base(driver, "image_cache_db_init"),
        base(driver, "glance-cache-prune"),
        base(driver, "glance-cache-clean"),
        base(driver, "glance-cache"),
    ]
    for lock in never[1:]:
        lock.touch()
    # a lock file oslo might create under any name: zero bytes, not a UUID
    never.append(write_file(base(driver, "glance-some-other-lock"), 0))
    never.append(write_file(base(driver, "img-empty"), 0))
    # not-hot journal (first byte 0): SQLite itself leaves it alone
    never.append(write_file(base(driver, "cache.db-journal"), 0))
    base(driver, "cache.db-journal").write_bytes(b"\0" * 512)
    never += [
        write_file(base(driver, "cache.db.bak"), 4096),
        write_file(base(driver, ".hidden"), 100),
        write_file(base(driver, "notes.txt"), 100),
        # id-shaped names Glance never issues: an operator's files
        write_file(base(driver, "backup"), 4096),
        write_file(base(driver, "README"), 100),
    ]
    never.append(Path(driver.db_path))
    old = 1_600_000_000.0
    for path in never:
        if path.name != "cache.db":
            os.utime(path, (old, old))
    now = settled(*never)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in never}

    result = run_reconcile(driver, ReconcilePolicy(orphans=mode), now=now)

    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in never}
    assert after == before
    assert rows(driver) == {}
    assert result.orphans == [] and result.orphans_in_grace == 0
    assert result.orphan_bytes == 0
    assert result.errors == []


# ------------------------------------------------------------ dry run == real


@pytest.mark.parametrize("mode", list(OrphanPolicy))
def test_dry_run_changes_nothing_and_equals_real_run(driver: Driver, mode: OrphanPolicy) -> None:
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c"), uid("img-d")):
        cache_image(driver, image_id, KIB)
    base(driver, uid("img-b")).unlink()  # phantom
    set_row(driver, uid("img-c"), size=5)  # size drift
    (Path(driver.base_dir) / "queue" / uid("img-d")).touch()  # stale queue entry
    assert driver.queue_image(uid("img-q"))  # queue entry kept
    old_orphan = write_file(base(driver, ORPHAN), 3000)
    young_orphan = write_file(base(driver, ORPHAN2), 100)
    now = settled(old_orphan)
    os.utime(young_orphan, (now - 1, now - 1))
    write_file(base(driver, "notes.txt"), 50)
    base(driver, "glance-cache-prune").touch()
    base(driver, "glance-cache-clean").touch()
    policy = ReconcilePolicy(orphans=mode)

    before = full_state(driver)
    dry = run_reconcile(driver, policy, dry_run=True, now=now)
    assert full_state(driver) == before
    real = run_reconcile(driver, policy, now=now)

    dry_doc, real_doc = dry.to_dict(), real.to_dict()
    assert dry_doc.pop("dry_run") is True
    assert real_doc.pop("dry_run") is False
    assert dry_doc == real_doc
    assert real_doc["phantoms_removed"] == 1
    assert real_doc["sizes_fixed"] == 1
    assert real_doc["queue_entries_removed"] == 1
    assert real_doc["orphans_in_grace"] == 1
    counts = {
        OrphanPolicy.ADOPT: "orphans_adopted",
        OrphanPolicy.DELETE: "orphans_removed",
        OrphanPolicy.REPORT: "orphans_reported",
    }
    assert real_doc[counts[mode]] == 1
    for key in ("dry_run", "orphans_adopted", "orphans_removed", "phantoms_removed", "sizes_fixed"):
        assert key in dry.to_dict()
    assert full_state(driver) != before
