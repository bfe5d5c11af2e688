"""Interop: Glance's real sqlite driver and ours on the same cache directory.

Every test drives ``glance.image_cache.drivers.sqlite.Driver`` (glance==33.0.0,
the ``interop`` extra) and ``glance_cache_agent.driver.Driver`` on one real
temporary cache directory, or on two caches Glance built identically, and
compares what each sees and does.

Without Glance the module skips, except in CI (``CI`` set, as CI systems do):
there a missing Glance FAILS, because these tests must run in CI.

Where we deliberately differ from Glance (docs/compatibility.md) the test
asserts both behaviours and says "differs from Glance".
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.driver import CacheSettings, Driver
from glance_cache_agent.maintenance import (
    CleanPolicy,
    OrphanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from tests.helpers.cache import cache_image, read_image, write_file
from tests.helpers.glance_harness import GlanceHarness, load_glance
from tests.helpers.tools import ci

pytestmark = pytest.mark.interop


def NO_PAUSE(seconds: float) -> None:
    """Maintenance pauses between batches; tests do not wait."""


LOCK_FILE = "image_cache_db_init"



@pytest.fixture(scope="module")
def glance() -> Iterator[GlanceHarness]:
    """Import Glance once per module (about 1.5 s); skip without it, fail in CI."""
    try:
        harness = load_glance()
    except ImportError as exc:
        if ci():
            pytest.fail(
                f"CI is set but Glance cannot be imported ({exc}): the interop tests must run "
                "in CI; install the 'interop' extra (pip install -e '.[test,interop]')",
                pytrace=False,
            )
        pytest.skip(f"glance is not importable ({exc}); install the 'interop' extra")
    yield harness
    harness.close()


@pytest.fixture
def gl(glance: GlanceHarness) -> Iterator[GlanceHarness]:
    """The harness, with Glance's CONF overrides cleared after each test."""
    yield glance
    glance.unconfigure()


# ---------------------------------------------------------------- helpers


def image_id(n: int) -> str:
    """A UUID image id, like the ones Glance's API issues."""
    return str(uuid.UUID(int=n))


IMG = [image_id(0xA0 + n) for n in range(8)]


def ours(cache_dir: Path, lock_path: Path | None) -> Driver:
    """Our driver on an existing cache; not configured: it must just read."""
    return Driver(CacheSettings(cache_dir=str(cache_dir), lock_path=lock_path))


def glance_write(gdrv: Any, key: str, size: int) -> None:
    with gdrv.open_for_write(key) as cache_file:
        cache_file.write(b"g" * size)


def glance_read(gdrv: Any, key: str) -> bytes:
    with gdrv.open_for_read(key) as cache_file:
        data: bytes = cache_file.read()
    return data


def glance_failed_write(gdrv: Any, key: str, written: int = 10) -> None:
    """A Glance write whose upstream dies part-way (the rollback path)."""
    with pytest.raises(OSError, match="upstream died"), gdrv.open_for_write(key) as cache_file:
        cache_file.write(b"p" * written)
        raise OSError("upstream died")


def glance_abandoned_write(gdrv: Any, key: str) -> None:
    """A Glance write whose generator is closed mid-way (client went away)."""
    cm = gdrv.open_for_write(key)
    cache_file = cm.__enter__()
    cache_file.write(b"a" * 5)
    cm.gen.close()  # GeneratorExit at the yield: Glance's "incomplete fetch"


def set_last_accessed(db_path: str | Path, values: dict[str, float]) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "UPDATE cached_images SET last_accessed = ? WHERE image_id = ?",
            [(v, k) for k, v in values.items()],
        )
    conn.close()


def schema(db_path: str | Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()


def journal_mode(db_path: str | Path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def listing(cache_dir: Path) -> set[str]:
    """Every regular file under the cache, as paths relative to it."""
    return {str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file()}


def assert_same_view(gdrv: Any, mine: Driver, ids: list[str]) -> None:
    """Every read-only call answers the same through Glance's driver and ours."""
    assert mine.get_cached_images() == gdrv.get_cached_images()
    assert mine.get_cache_size() == gdrv.get_cache_size()
    assert mine.get_queued_images() == gdrv.get_queued_images()
    assert mine.get_least_recently_accessed() == gdrv.get_least_recently_accessed()
    for state_dir in ("", "incomplete", "invalid", "queue"):
        path = os.path.join(gdrv.base_dir, state_dir)
        assert sorted(mine.get_cache_files(path)) == sorted(gdrv.get_cache_files(path)), state_dir
    for key in ids:
        assert mine.is_cached(key) == gdrv.is_cached(key), key
        assert mine.is_queued(key) == gdrv.is_queued(key), key
        assert mine.is_being_cached(key) == gdrv.is_being_cached(key), key
        assert mine.is_cacheable(key) == gdrv.is_cacheable(key), key
        assert mine.get_hit_count(key) == gdrv.get_hit_count(key), key
        if gdrv.is_cached(key):
            assert mine.get_image_size(key) == gdrv.get_image_size(key), key


# ------------------------------------------------ 1. Glance writes, ours reads


def test_glance_writes_reads_queues_and_ours_reads_the_same(
    gl: GlanceHarness, tmp_path: Path
) -> None:
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    gdrv = gl.driver(cache, lock_path=locks)
    a, b, c, q1, q2, bad, w, unknown = IMG
    sizes = {a: 1000, b: 700, c: 300}
    for key, size in sizes.items():
        glance_write(gdrv, key, size)
    assert glance_read(gdrv, a) == b"g" * 1000
    glance_read(gdrv, a)
    glance_read(gdrv, b)
    assert gdrv.queue_image(q1) and gdrv.queue_image(q2)
    old = time.time() - 60
    os.utime(gdrv.get_image_filepath(q2, "queue"), (old, old))  # q2 queued first
    glance_failed_write(gdrv, bad)
    # lock_path is outside the cache: only Glance's own files are in it
    assert sorted(os.listdir(cache)) == sorted(
        [a, b, c, "cache.db", "incomplete", "invalid", "queue"]
    )

    mine = ours(cache, locks)
    ids = [a, b, c, q1, q2, bad, w, unknown]
    with gdrv.open_for_write(w) as in_flight:  # a download in progress
        in_flight.write(b"w" * 10)
        in_flight.flush()
        assert mine.is_being_cached(w) and gdrv.is_being_cached(w)
        assert_same_view(gdrv, mine, ids)
    assert_same_view(gdrv, mine, ids)

    # and the values are the ones Glance wrote, not merely equal
    images = {r["image_id"]: r for r in mine.get_cached_images()}
    assert [r["image_id"] for r in mine.get_cached_images()] == sorted([a, b, c, w])
    assert {k: images[k]["size"] for k in sizes} == sizes
    assert {k: mine.get_hit_count(k) for k in (a, b, c, w)} == {a: 2, b: 1, c: 0, w: 0}
    assert mine.get_queued_images() == [q2, q1]
    assert mine.get_cache_size() == 1000 + 700 + 300 + 10
    assert mine.get_least_recently_accessed() == (c, 300)
    for row in images.values():
        assert isinstance(row["last_accessed"], float) and isinstance(row["last_modified"], float)
        assert row["last_accessed"] >= row["last_modified"] > 0
    assert not mine.is_cached(bad) and os.path.isfile(gdrv.get_image_filepath(bad, "invalid"))

    # our initialize_db on Glance's database changes nothing either
    before = schema(mine.db_path)
    mine.configure()
    assert schema(mine.db_path) == before
    assert journal_mode(mine.db_path) == "delete"
    assert_same_view(gdrv, mine, ids)


# ------------------------------------------------ 2. ours writes, Glance reads


def test_ours_writes_reads_queues_and_glance_reads_the_same(
    gl: GlanceHarness, tmp_path: Path
) -> None:
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    mine = Driver(CacheSettings(cache_dir=str(cache), lock_path=str(locks)))
    mine.configure()  # our initialize_db creates cache.db
    created = schema(mine.db_path)
    assert [(t, n) for t, n, *_ in created] == [
        ("index", "sqlite_autoindex_cached_images_1"),
        ("table", "cached_images"),
    ]
    assert journal_mode(mine.db_path) == "delete"

    a, b, c, q1, q2, bad, w, unknown = IMG
    cache_image(mine, a, 1000)
    cache_image(mine, b, 700)
    cache_image(mine, c, 300)
    read_image(mine, a)
    read_image(mine, a)
    read_image(mine, b)
    cache_image(mine, b, 800)  # a re-cache: our commit upserts (Glance's INSERT would fail)
    assert mine.queue_image(q1) and mine.queue_image(q2)
    old = time.time() - 60
    os.utime(mine.get_image_filepath(q2, "queue"), (old, old))
    with pytest.raises(OSError), mine.open_for_write(bad) as cache_file:
        cache_file.write(b"partial")
        raise OSError("upstream died")

    # Glance's configure() on our database: no schema change, journal mode kept
    gdrv = gl.driver(cache, lock_path=locks)
    assert schema(mine.db_path) == created
    assert journal_mode(mine.db_path) == "delete"
    assert not os.path.exists(mine.db_path + "-wal")

    ids = [a, b, c, q1, q2, bad, w, unknown]
    with mine.open_for_write(w) as in_flight:
        in_flight.write(b"w" * 10)
        in_flight.flush()
        assert gdrv.is_being_cached(w)
        assert_same_view(gdrv, mine, ids)
    assert_same_view(gdrv, mine, ids)

    rows = {r["image_id"]: r for r in gdrv.get_cached_images()}
    assert sorted(rows) == sorted([a, b, c, w])
    assert {k: rows[k]["size"] for k in (a, b, c, w)} == {a: 1000, b: 800, c: 300, w: 10}
    assert {k: gdrv.get_hit_count(k) for k in (a, b, c, w)} == {a: 2, b: 1, c: 0, w: 0}
    assert gdrv.get_queued_images() == [q2, q1]
    assert gdrv.get_least_recently_accessed() == (c, 300)
    assert gdrv.get_cache_size() == 1000 + 800 + 300 + 10

    # Glance serves, counts and deletes what we cached; we see its changes
    assert glance_read(gdrv, c) == b"x" * 300
    assert mine.get_hit_count(c) == gdrv.get_hit_count(c) == 1
    gdrv.delete_cached_image(w)
    assert not mine.is_cached(w) and w not in {r["image_id"] for r in mine.get_cached_images()}
    glance_write(gdrv, w, 20)  # Glance's plain INSERT works: no stale row of ours in the way
    assert_same_view(gdrv, mine, ids)
    assert schema(mine.db_path) == created
    assert journal_mode(mine.db_path) == "delete"


# ------------------------------------------- 3. our prune on a Glance cache

PRUNE_SIZES = {IMG[0]: 500, IMG[1]: 400, IMG[2]: 300, IMG[3]: 600, IMG[4]: 200, IMG[5]: 100}
# LRU order differs from both id order and write order
PRUNE_LAST_ACCESSED = {
    IMG[3]: 1_700_000_010.25,
    IMG[0]: 1_700_000_020.5,
    IMG[5]: 1_700_000_030.75,
    IMG[1]: 1_700_000_040.0,
    IMG[4]: 1_700_000_050.125,
    IMG[2]: 1_700_000_060.0,
}


def build_prune_cache(gl: GlanceHarness, cache: Path, locks: Path) -> Any:
    gdrv = gl.driver(cache, lock_path=locks)
    for key, size in PRUNE_SIZES.items():
        glance_write(gdrv, key, size)
    for key in (IMG[0], IMG[2], IMG[4]):
        glance_read(gdrv, key)
    set_last_accessed(gdrv.db_path, PRUNE_LAST_ACCESSED)
    return gdrv


def test_our_prune_picks_glance_victims_in_glance_order(gl: GlanceHarness, tmp_path: Path) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    build_prune_cache(gl, ours_dir, tmp_path / "ours-locks")
    build_prune_cache(gl, theirs_dir, tmp_path / "theirs-locks")
    assert listing(ours_dir) == listing(theirs_dir)
    max_size = 900  # 2100 bytes cached: evict IMG3 (600), IMG0 (500), IMG5 (100)

    image_cache = gl.image_cache(theirs_dir, max_size=max_size, lock_path=tmp_path / "theirs-locks")
    glance_victims: list[str] = []
    delete = image_cache.driver.delete_cached_image

    def recording_delete(key: str) -> None:
        glance_victims.append(key)
        delete(key)

    image_cache.driver.delete_cached_image = recording_delete
    glance_result = image_cache.prune()

    mine = ours(ours_dir, tmp_path / "ours-locks")
    result = run_prune(mine, PrunePolicy(max_size=max_size), pause=NO_PAUSE)

    assert glance_victims == [IMG[3], IMG[0], IMG[5]]
    assert result.images == glance_victims
    assert (result.pruned_images, result.pruned_bytes) == glance_result == (3, 1200)
    assert result.stopped_by == "target_reached"
    assert result.size_after == 900
    assert listing(ours_dir) == listing(theirs_dir)
    assert [r["image_id"] for r in image_cache.get_cached_images()] == [
        r["image_id"] for r in mine.get_cached_images()
    ]

    # Glance's driver keeps working on the cache we pruned
    gdrv = gl.driver(ours_dir, lock_path=tmp_path / "ours-locks")
    new = IMG[6]
    glance_write(gdrv, new, 50)
    assert glance_read(gdrv, new) == b"g" * 50
    assert gdrv.get_hit_count(new) == 1
    rows = gdrv.get_cached_images()
    files = {os.path.basename(p) for p in gdrv.get_cache_files(gdrv.base_dir)}
    assert {r["image_id"] for r in rows} == files == {IMG[1], IMG[2], IMG[4], new}
    for row in rows:  # every row has its file, with the recorded size
        assert os.path.getsize(gdrv.get_image_filepath(row["image_id"])) == row["size"]
    assert gdrv.get_cache_size() == sum(r["size"] for r in rows) == 950
    assert gdrv.get_least_recently_accessed() == (IMG[1], 400)


# ------------------------------------------- 4. our clean vs Glance's clean


def build_clean_cache(gl: GlanceHarness, cache: Path, locks: Path, now: float) -> Any:
    gdrv = gl.driver(cache, lock_path=locks)
    glance_write(gdrv, IMG[0], 100)  # a cached image: clean leaves it alone
    assert gdrv.queue_image(IMG[1])
    glance_failed_write(gdrv, IMG[2])  # -> invalid/
    glance_abandoned_write(gdrv, IMG[3])  # -> invalid/ ("incomplete fetch")
    # what killed writers leave in incomplete/ (nobody has them open)
    incomplete = cache / "incomplete"
    write_file(incomplete / IMG[4], 40, age=7200, now=now)  # stalled
    write_file(incomplete / IMG[5], 30, age=3700, now=now)  # stalled, just past the stall time
    write_file(incomplete / IMG[6], 20, age=60, now=now)  # recent: kept
    write_file(incomplete / IMG[7], 10, age=-3600, now=now)  # mtime in the future: kept
    return gdrv


def test_our_clean_removes_what_glance_clean_removes(gl: GlanceHarness, tmp_path: Path) -> None:
    now = time.time()
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    build_clean_cache(gl, ours_dir, tmp_path / "ours-locks", now)
    theirs = build_clean_cache(gl, theirs_dir, tmp_path / "theirs-locks", now)
    before = listing(ours_dir)
    assert before == listing(theirs_dir)
    assert {f"invalid/{IMG[2]}", f"invalid/{IMG[3]}", f"incomplete/{IMG[4]}"} <= before

    theirs.clean(stall_time=3600)
    glance_removed = before - listing(theirs_dir)

    mine = ours(ours_dir, tmp_path / "ours-locks")
    result = run_clean(mine, CleanPolicy(stall_time=3600, settle_time=0), pause=NO_PAUSE)
    our_removed = before - listing(ours_dir)

    assert glance_removed == {
        f"invalid/{IMG[2]}",
        f"invalid/{IMG[3]}",
        f"incomplete/{IMG[4]}",
        f"incomplete/{IMG[5]}",
    }
    assert our_removed == glance_removed
    assert {os.path.relpath(p, ours_dir) for p in result.files} == glance_removed
    assert (result.invalid_removed, result.stalled_removed) == (2, 2)
    assert result.bytes_freed == 10 + 5 + 40 + 30
    assert result.skipped_future == 1  # Glance keeps it too, silently


# ------------------------------------------- 5. Glance failure modes ours repairs


def test_glance_failed_recache_orphans_the_good_file_and_our_reconcile_adopts_it(
    gl: GlanceHarness, tmp_path: Path
) -> None:
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    gdrv = gl.driver(cache, lock_path=locks)
    good = IMG[0]
    glance_write(gdrv, good, 1000)
    glance_read(gdrv, good)
    glance_failed_write(gdrv, good)  # re-cache of an already cached image fails part-way

    # Glance's rollback deleted the row although the good file is still cached
    path = gdrv.get_image_filepath(good)
    assert os.path.getsize(path) == 1000 and gdrv.is_cached(good)
    assert gdrv.get_cached_images() == []
    with pytest.raises(TypeError):  # Glance: fetchone() of a missing row
        gdrv.get_hit_count(good)

    mine = ours(cache, locks)
    assert mine.get_hit_count(good) == 0  # differs from Glance: no TypeError
    result = run_reconcile(mine, ReconcilePolicy(orphan_grace=0, orphans=OrphanPolicy.ADOPT))
    assert (result.orphans_adopted, result.orphans, result.orphan_bytes) == (1, [good], 1000)

    rows = gdrv.get_cached_images()
    assert [(r["image_id"], r["size"], r["hits"]) for r in rows] == [
        (good, os.stat(path).st_size, 0)
    ]
    assert rows[0]["last_accessed"] >= rows[0]["last_modified"] > 0
    assert gdrv.get_hit_count(good) == 0
    glance_read(gdrv, good)
    assert gdrv.get_hit_count(good) == 1
    assert gdrv.get_least_recently_accessed() == (good, 1000)

    # differs from Glance: the same failure through our driver keeps the row
    other = IMG[1]
    glance_write(gdrv, other, 500)
    with pytest.raises(OSError), mine.open_for_write(other) as cache_file:
        cache_file.write(b"partial")
        raise OSError("upstream died")
    assert [r["image_id"] for r in gdrv.get_cached_images()] == sorted([good, other])
    assert gdrv.get_hit_count(other) == 0


ORPHAN_SIZE = 3000


def build_orphan_cache(gl: GlanceHarness, cache: Path, locks: Path) -> Any:
    gdrv = gl.driver(cache, lock_path=locks)
    glance_write(gdrv, IMG[0], 1000)
    glance_write(gdrv, IMG[1], 1000)
    # an image file an operator copied in by hand: no row
    write_file(cache / IMG[7], ORPHAN_SIZE, age=86400)
    return gdrv


def test_orphan_over_max_size_glance_evicts_everything_ours_stops_at_untracked(
    gl: GlanceHarness, tmp_path: Path
) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    build_orphan_cache(gl, ours_dir, tmp_path / "ours-locks")
    build_orphan_cache(gl, theirs_dir, tmp_path / "theirs-locks")
    assert listing(ours_dir) == listing(theirs_dir)
    max_size = 2000  # the orphan alone (3000 B) exceeds it

    # Glance: evicts every tracked image and still ends over the limit
    image_cache = gl.image_cache(theirs_dir, max_size=max_size, lock_path=tmp_path / "theirs-locks")
    assert image_cache.get_cache_size() == 5000
    assert image_cache.prune() == (2, 2000)
    assert image_cache.get_cached_images() == []
    assert image_cache.get_cache_size() == ORPHAN_SIZE > max_size

    # ours (differs from Glance): evicts nothing it cannot help with, says why
    mine = ours(ours_dir, tmp_path / "ours-locks")
    result = run_prune(mine, PrunePolicy(max_size=max_size), pause=NO_PAUSE)
    assert result.stopped_by == "untracked"
    assert result.trigger == "size"
    assert (result.pruned_images, result.images) == (0, [])
    assert (result.size_before, result.untracked_bytes) == (5000, ORPHAN_SIZE)
    gdrv = gl.driver(ours_dir, lock_path=tmp_path / "ours-locks")
    assert [r["image_id"] for r in gdrv.get_cached_images()] == [IMG[0], IMG[1]]
    assert gdrv.get_cache_size() == 5000

    # the repair: reconcile adopts the orphan, then prune evicts it (least recently used)
    adopted = run_reconcile(mine, ReconcilePolicy(orphan_grace=0))
    assert adopted.orphans_adopted == 1
    result = run_prune(mine, PrunePolicy(max_size=max_size), pause=NO_PAUSE)
    assert (result.images, result.stopped_by) == ([IMG[7]], "target_reached")
    assert [r["image_id"] for r in gdrv.get_cached_images()] == [IMG[0], IMG[1]]
    assert gdrv.get_cache_size() == 2000


# ------------------------------------------- 6. deletes across the two drivers


def test_our_delete_of_a_glance_cached_image(gl: GlanceHarness, tmp_path: Path) -> None:
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    gdrv = gl.driver(cache, lock_path=locks)
    key = IMG[0]
    glance_write(gdrv, key, 100)
    assert gdrv.is_cached(key)

    ours(cache, locks).delete_cached_image(key)
    assert not gdrv.is_cached(key)
    assert gdrv.is_cacheable(key)
    assert gdrv.get_cached_images() == []
    assert gdrv.get_hit_count(key) == 0
    glance_write(gdrv, key, 200)  # the row is gone too: Glance's INSERT succeeds
    assert [(r["image_id"], r["size"]) for r in gdrv.get_cached_images()] == [(key, 200)]


def build_default_lock_cache(gl: GlanceHarness, cache: Path) -> Any:
    gdrv = gl.driver(cache, lock_path=None)  # Glance's default: lock files in the cache dir
    glance_write(gdrv, IMG[0], 100)
    glance_write(gdrv, IMG[1], 200)
    assert LOCK_FILE in os.listdir(cache)
    return gdrv


def test_delete_all_keeps_lock_files_glance_counts_them(gl: GlanceHarness, tmp_path: Path) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    build_default_lock_cache(gl, ours_dir)
    theirs = build_default_lock_cache(gl, theirs_dir)
    assert listing(ours_dir) == listing(theirs_dir)

    glance_count = theirs.delete_all_cached_images()
    mine = ours(ours_dir, lock_path=None)
    assert mine.settings.effective_lock_path == str(ours_dir)
    our_count = mine.delete_all_cached_images()

    # differs from Glance (docs/compatibility.md): the lock file is neither
    # deleted nor counted; Glance deletes it and counts it as an image
    assert our_count == 2
    assert glance_count == 3
    assert LOCK_FILE in os.listdir(ours_dir)
    assert LOCK_FILE not in os.listdir(theirs_dir)
    assert mine.get_cached_images() == []
    assert theirs.get_cached_images() == []
    assert listing(ours_dir) == {"cache.db", LOCK_FILE}
    assert listing(theirs_dir) == {"cache.db"}
