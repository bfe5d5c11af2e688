"""The centralized_db store's core checks, shared by the SQLite unit tier and
the real-server integration tier (PostgreSQL, MariaDB).

Each ``check_*`` function takes a database URL holding Glance's schema (the
SQLite replica or a real ``db sync``) and a scratch directory, registers its
own nodes, and asserts through the store's interface and through plain
SQL on Glance's tables, so the same expectations hold on every server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, create_engine, text

from glance_cache_agent.driver import CacheDriver, CachedRow, CacheSettings
from glance_cache_agent.driver.centralized import CentralizedDriver, open_centralized_driver
from glance_cache_agent.exporter.cache_state import compute_cache_state
from glance_cache_agent.maintenance import (
    CleanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from glance_cache_agent.maintenance.delete import delete_all_cached_images, delete_cached_images
from tests.helpers.cache import cache_image, read_image, uid
from tests.helpers.dbservers import register_node

NODE_A = "https://node-a.example:9292"
NODE_B = "https://node-b.example:9292"

#: 2026-03-01 12:00:00 UTC, with a fraction a DATETIME(6) keeps
T0 = 1772366400.25

RawRow = tuple[int, datetime, datetime, int, int, Any]


def open_node(url: str, root: Path, node_url: str = NODE_A, **kwargs: Any) -> CentralizedDriver:
    """A centralized driver on ``node_url``'s rows, its cache dir under ``root``."""
    cache_dir = root / ("cache-" + node_url.split("//")[-1].split(".")[0])
    driver = open_centralized_driver(
        CacheSettings(cache_dir=str(cache_dir)), url, node_url, **kwargs
    )
    assert isinstance(driver, CentralizedDriver)
    driver.set_paths()
    return driver


def two_nodes(url: str, root: Path) -> tuple[CentralizedDriver, CentralizedDriver]:
    """Register nodes A and B (as glance-api does at start) and open a driver on each."""
    register_node(url, NODE_A)
    register_node(url, NODE_B)
    return open_node(url, root, NODE_A), open_node(url, root, NODE_B)


@contextmanager
def raw(url: str) -> Iterator[Any]:
    """A plain SQLAlchemy connection in one committed transaction (test set-up, inspection)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def raw_rows(url: str, node_id: int) -> dict[str, RawRow]:
    """``{image_id: (id, last_accessed, last_modified, size, hits, checksum)}`` of a node."""
    with raw(url) as conn:
        result = conn.execute(
            text(
                "SELECT image_id, id, last_accessed, last_modified, size, hits, checksum"
                " FROM cached_images WHERE node_reference_id = :n"
            ).columns(last_accessed=DateTime(), last_modified=DateTime()),
            {"n": node_id},
        )
        return {r[0]: (int(r[1]), r[2], r[3], int(r[4]), int(r[5]), r[6]) for r in result}


def insert_raw(url: str, node_id: int, image_id: str, when: datetime, size: int, hits: int) -> None:
    """A row written the way Glance's ``insert_cache_details`` writes it."""
    with raw(url) as conn:
        conn.execute(
            text(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits,"
                " checksum, node_reference_id) VALUES (:i, :t, :t, :s, :h, NULL, :n)"
            ),
            {"i": image_id, "t": when, "s": size, "h": hits, "n": node_id},
        )


def utc(epoch: float) -> datetime:
    """The naive UTC wall clock Glance stores for ``epoch``."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def whole_seconds(url: str) -> bool:
    """Whether the server's DATETIME drops fractions (MySQL/MariaDB: whole seconds)."""
    return url.startswith(("mysql", "mariadb"))


# ------------------------------------------------------------------------- checks


def check_rows_as_glance_writes_them(url: str, root: Path) -> None:
    """record_cached inserts hits 0, checksum NULL, naive UTC; a re-cache over
    a stale row repairs size and timestamps and keeps hits and the key."""
    a, _ = two_nodes(url, root)
    a.store.record_cached(uid("new"), 100, T0)
    (key, accessed, modified, size, hits, checksum) = raw_rows(url, a.store.node_id)[uid("new")]
    assert (size, hits, checksum) == (100, 0, None)
    expected = utc(T0).replace(microsecond=0) if whole_seconds(url) else utc(T0)
    assert (accessed, modified) == (expected, expected)

    a.store.record_hit(uid("new"), T0 + 10)
    a.store.record_cached(uid("new"), 250, T0 + 20)  # Glance's INSERT would fail here
    after = raw_rows(url, a.store.node_id)[uid("new")]
    assert (after[0], after[3], after[4]) == (key, 250, 1)
    expected_epoch = float(int(T0 + 20)) if whole_seconds(url) else T0 + 20
    assert a.store.rows_by_id([uid("new")])[uid("new")].last_modified == expected_epoch


def check_two_nodes_never_touch_each_other(url: str, root: Path) -> None:
    """Every read sees only node A's rows; every write leaves node B's rows as they were."""
    a, b = two_nodes(url, root)
    shared = [uid(f"s{i}") for i in range(4)]
    for image_id in shared:
        b.store.record_cached(image_id, 7, T0)
        b.store.record_hit(image_id, T0 + 1)
    b.store.adopt([CachedRow("not-a-uuid", T0, T0, 1, 0)])  # refused: never inserted
    before_b = raw_rows(url, b.store.node_id)
    assert set(before_b) == set(shared)

    assert a.store.list_rows() == [] and a.store.total_hits() == 0
    assert a.store.newest_access() is None and list(a.store.iter_row_ids()) == []
    assert a.store.rows_by_id(shared) == {} and list(a.store.iter_rows_lru()) == []
    for image_id in shared[:2]:
        a.store.record_cached(image_id, 9, T0 + 5)
        a.store.record_hit(image_id, T0 + 6)
    assert a.store.adopt([CachedRow(k, T0, T0, 3, 0) for k in shared]) == 2
    assert a.store.touch_rows(shared, T0 + 100) == 4
    assert a.store.set_sizes([(k, 11) for k in shared]) == 4
    assert a.store.delete_rows(shared[:1]) == 1
    a.store.check_writable()
    assert a.store.total_hits() == 1
    a.store.delete_all_rows()
    assert a.store.list_rows() == []
    assert raw_rows(url, b.store.node_id) == before_b


def check_lru_order_breaks_ties_by_id(url: str, root: Path) -> None:
    """Eviction order is (last_accessed, image_id) over pages, equal times included."""
    a, _ = two_nodes(url, root)
    names = ["e", "a", "d", "b", "c"]
    a.store.adopt([CachedRow(uid(n), T0, T0, 1, 0) for n in names])
    a.store.adopt([CachedRow(uid("old"), T0 - 60, T0 - 60, 1, 0)])
    order = [r.image_id for r in a.store.iter_rows_lru(page_size=2, max_page_size=2)]
    assert order == [uid("old")] + [uid(n) for n in sorted(names)]
    assert a.get_least_recently_accessed() == (uid("old"), 0)  # no file: size 0, as Glance


def check_adoption_keeps_existing_rows_and_keys(url: str, root: Path) -> None:
    """An existing row wins with its primary key and values; new rows get hits 0."""
    a, _ = two_nodes(url, root)
    insert_raw(url, a.store.node_id, uid("glance"), utc(T0), 500, 4)
    before = raw_rows(url, a.store.node_id)[uid("glance")]
    adopted = a.store.adopt(
        [CachedRow(uid("glance"), T0 + 9, T0 + 9, 1, 0), CachedRow(uid("orphan"), T0, T0, 2, 0)]
    )
    rows = raw_rows(url, a.store.node_id)
    assert adopted == 1
    assert rows[uid("glance")] == before
    assert rows[uid("orphan")][3:] == (2, 0, None)


def check_a_read_in_the_same_second_changes_the_row(url: str, root: Path) -> None:
    """A read that leaves ``last_accessed`` as it was (same stored value) still
    makes prune's planned row stale: hits are compared too."""
    a, _ = two_nodes(url, root)
    a.store.record_cached(uid("x"), 1, float(int(T0)))
    a.store.record_hit(uid("x"), float(int(T0)))
    planned = a.store.rows_by_id([uid("x")])[uid("x")]
    a.store.record_hit(uid("x"), float(int(T0)) + (0.4 if whole_seconds(url) else 0.0))
    now = a.store.rows_by_id([uid("x")])[uid("x")]
    assert now.last_accessed == planned.last_accessed
    assert not now.unchanged_since(planned)


def check_timestamps_right_under_any_tz(url: str, root: Path, zone: str) -> None:
    """Under ``TZ=zone`` the stored value is the UTC wall clock and reads back exact."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        a, _ = two_nodes(url, root)
        when = float(int(T0))
        a.store.record_cached(uid("tz"), 1, when)
        assert raw_rows(url, a.store.node_id)[uid("tz")][1] == utc(when)
        row = a.store.rows_by_id([uid("tz")])[uid("tz")]
        assert (row.last_accessed, row.last_modified, a.store.newest_access()) == (when,) * 3
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


CORE_CHECKS = [
    check_rows_as_glance_writes_them,
    check_two_nodes_never_touch_each_other,
    check_lru_order_breaks_ties_by_id,
    check_adoption_keeps_existing_rows_and_keys,
    check_a_read_in_the_same_second_changes_the_row,
]


def check_maintenance_outcomes(driver: CacheDriver, plant_invalid_row: Callable[[], None]) -> None:
    """Clean, reconcile, prune, delete and the cache state end to end over
    real files: the same results whichever store holds ``driver``'s rows.
    ``plant_invalid_row`` adds a row whose id is not a UUID (``README``)."""
    for name in ("a", "b", "c", "d"):
        cache_image(driver, uid(name), size=100)
        read_image(driver, uid(name))
    Path(driver.base_dir, uid("orphan")).write_bytes(b"o" * 10)
    os.unlink(driver.get_image_filepath(uid("c")))  # phantom row
    driver.store.set_sizes([(uid("d"), 1)])  # size drift
    plant_invalid_row()
    Path(driver.get_image_filepath(uid("bad"), "invalid")).write_bytes(b"i" * 5)
    stalled = Path(driver.get_image_filepath(uid("slow"), "incomplete"))
    stalled.write_bytes(b"s" * 7)
    os.utime(stalled, (T0, T0))

    state = compute_cache_state(driver, max_size=10_000, per_image_limit=10)
    assert (state.hits, state.orphan_files, state.phantom_rows) == (4, 1, 2)

    cleaned = run_clean(driver, CleanPolicy(settle_time=0.0))
    assert (cleaned.invalid_removed, cleaned.stalled_removed, cleaned.bytes_freed) == (1, 1, 12)

    reconciled = run_reconcile(driver, ReconcilePolicy(orphan_grace=0.0))
    assert (reconciled.orphans_adopted, reconciled.phantoms_removed) == (1, 1)
    assert (reconciled.sizes_fixed, reconciled.invalid_rows_removed) == (1, 1)

    pruned = run_prune(driver, PrunePolicy(max_size=150, batch_pause=0.0, max_idle=1e9))
    assert pruned.images == [uid("a"), uid("b")]
    assert driver.get_least_recently_accessed() == (uid("d"), 100)
    assert driver.get_hit_count(uid("d")) == 1

    assert delete_cached_images(driver, [uid("d")]).deleted == [uid("d")]
    assert [r["image_id"] for r in driver.get_cached_images()] == [uid("orphan")]
    assert delete_all_cached_images(driver).deleted == [uid("orphan")]
    assert driver.store.list_rows() == []
