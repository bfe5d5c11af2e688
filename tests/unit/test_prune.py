"""Prune: least recently accessed first, down to a target, always terminating.

Contract section 5, scenarios 41-49, plus the agent's own triggers and
bounds (issue 2 section 3): low watermark, free-space trigger, max idle,
protected images, per-run bounds, re-checks after planning, batching.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from glance_cache_agent.driver import BaseScan, CachedRow, Driver, FileInfo
from glance_cache_agent.maintenance import (
    CacheSnapshot,
    FilesystemUsage,
    PrunePolicy,
    ReconcilePolicy,
    execute_prune,
    plan_prune,
    run_prune,
    run_reconcile,
    take_snapshot,
)
from tests.helpers.cache import (
    at,
    cache_image,
    full_state,
    no_pause,
    read_image,
    rows,
    set_row,
    uid,
    write_file,
)

KIB = 1024
DAY = 86400
T0 = 1_900_000_000




@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """A frozen clock that advances one second at every ``time.time()`` call,
    so cache/read order gives strictly increasing ``last_accessed``."""
    with freeze_time(at(T0), auto_tick_seconds=1, ignore=["_pytest"]) as frozen:
        yield frozen


def base(driver: Driver, name: str) -> Path:
    return Path(driver.base_dir) / name


def image_names(driver: Driver) -> set[str]:
    return set(driver.scan_base().images)


def assert_file_before_row(driver: Driver) -> None:
    """No row points at a missing file (prune never creates a phantom)."""
    present = image_names(driver)
    assert set(rows(driver)) <= present


def populate(driver: Driver, names: list[str], size: int = KIB) -> None:
    """Cache ``names`` in order; with the ``clock`` fixture each is newer than the last."""
    for name in names:
        cache_image(driver, name, size)


# ------------------------------------------------------------------ scenarios


def test_s41_at_the_limit_nothing_happens(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    populate(driver, [uid("img-a"), uid("img-b")])
    before = full_state(driver)

    result = run_prune(driver, PrunePolicy(max_size=2048), pause=no_pause)

    assert (result.pruned_images, result.pruned_bytes) == (0, 0)
    assert result.stopped_by == "not_triggered"
    assert result.trigger is None
    after = full_state(driver)
    after[0].pop("glance-cache-prune")  # type: ignore[attr-defined]
    assert after == before


def test_s41_one_byte_over_evicts_the_least_recently_accessed(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid("img-b"), uid("img-a")])  # b cached first: least recently accessed

    result = run_prune(driver, PrunePolicy(max_size=2047), pause=no_pause)

    assert (result.pruned_images, result.pruned_bytes) == (1, 1024)
    assert result.images == [uid("img-b")]
    assert image_names(driver) == {uid("img-a")}
    assert set(rows(driver)) == {uid("img-a")}
    assert (result.trigger, result.stopped_by) == ("size", "target_reached")


def test_s42_canonical_lru(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    ids = [uid(str(i)) for i in range(10)]
    populate(driver, ids)
    for image_id in ids:
        read_image(driver, image_id)
    cache_image(driver, uid("99"), KIB)
    assert driver.get_cache_size() == 11 * KIB

    result = run_prune(driver, PrunePolicy(max_size=5120), pause=no_pause)

    assert (result.pruned_images, result.pruned_bytes) == (6, 6144)
    assert result.images == [uid("0"), uid("1"), uid("2"), uid("3"), uid("4"), uid("5")]
    assert driver.get_cache_size() == 5120 == result.size_after
    assert result.size_before == 11 * KIB
    assert image_names(driver) == {uid("6"), uid("7"), uid("8"), uid("9"), uid("99")}
    assert set(rows(driver)) == {uid("6"), uid("7"), uid("8"), uid("9"), uid("99")}
    assert result.target_bytes == 5120


def test_s43_prune_to_zero(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    cache_image(driver, uid("xxx"), KIB)
    read_image(driver, uid("xxx"))

    result = run_prune(driver, PrunePolicy(max_size=0), pause=no_pause)

    assert result.images == [uid("xxx")]
    assert driver.get_cache_size() == 0
    assert rows(driver) == {}
    assert (result.target_bytes, result.size_after, result.stopped_by) == (0, 0, "target_reached")


def test_s44_hits_are_ignored(driver: Driver) -> None:
    populate(driver, [uid("img-a"), uid("img-b")])
    set_row(driver, uid("img-a"), hits=100, last_accessed=T0 - 100)
    set_row(driver, uid("img-b"), hits=0, last_accessed=T0 - 10)

    result = run_prune(driver, PrunePolicy(max_size=KIB), pause=no_pause)

    assert result.images == [uid("img-a")]
    assert image_names(driver) == {uid("img-b")}


def test_s45_equal_timestamps_break_ties_by_image_id(driver: Driver) -> None:
    """Differs from Glance: Glance's order among equal ``last_accessed`` is
    unspecified; ours is by image id ascending."""
    populate(driver, [uid("img-c"), uid("img-a"), uid("img-b")])
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        set_row(driver, image_id, last_accessed=T0)

    result = run_prune(driver, PrunePolicy(max_size=KIB), pause=no_pause)

    assert result.images == [uid("img-a"), uid("img-b")]
    assert image_names(driver) == {uid("img-c")}


def test_s46_phantom_rows_not_pruned_then_removed_by_reconcile(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    """Differs from Glance: Glance "prunes" the phantom row 'a' at 0 bytes and
    returns (2, 1024); ours ignores phantom rows (they hold no bytes) and
    leaves them to reconcile, which reports them separately."""
    populate(driver, [uid("a"), uid("b"), uid("c")])
    base(driver, uid("a")).unlink()

    result = run_prune(driver, PrunePolicy(max_size=KIB), pause=no_pause)

    assert (result.pruned_images, result.pruned_bytes) == (1, 1024)
    assert result.images == [uid("b")]
    assert image_names(driver) == {uid("c")}
    assert set(rows(driver)) == {uid("a"), uid("c")}  # the phantom is left alone

    rec = run_reconcile(driver, ReconcilePolicy())
    assert rec.phantoms_removed == 1 and rec.phantoms == [uid("a")]
    assert set(rows(driver)) == {uid("c")}


def test_s47_orphan_larger_than_the_limit(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    """Differs from Glance: Glance evicts both tracked images and still ends
    over the limit, returning (2, 2048); ours evicts nothing for size and
    reports the untracked bytes."""
    populate(driver, [uid("img-a"), uid("img-b")])
    orphan = write_file(base(driver, "0b7c3f5e-1111-4222-8333-444455556666"), 3000)

    result = run_prune(driver, PrunePolicy(max_size=2000), pause=no_pause)

    assert (result.pruned_images, result.pruned_bytes) == (0, 0)
    assert result.stopped_by == "untracked"
    assert result.trigger == "size"
    assert result.untracked_bytes == 3000
    assert result.size_before == result.size_after == 3000 + 2048
    assert orphan.exists()
    assert image_names(driver) == {uid("img-a"), uid("img-b"), orphan.name}
    assert set(rows(driver)) == {uid("img-a"), uid("img-b")}


def test_s48_no_rows_but_over_the_limit_terminates(driver: Driver) -> None:
    for i in range(5):
        write_file(base(driver, f"5e0d7c1a-0000-4000-8000-00000000000{i}"), 100)

    result = run_prune(driver, PrunePolicy(max_size=10), pause=no_pause)

    assert result.pruned_images == 0
    assert result.stopped_by == "untracked"
    assert result.untracked_bytes == 500
    assert len(image_names(driver)) == 5


def test_s49_byte_accounting_uses_file_sizes(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    populate(driver, [uid("img-a")], 1000)
    populate(driver, [uid("img-b")], 2000)
    populate(driver, [uid("img-c")], 3000)
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        set_row(driver, image_id, size=1)  # the row is wrong; the file is the truth
    size_before = driver.get_cache_size()

    result = run_prune(driver, PrunePolicy(max_size=3500), pause=no_pause)

    assert result.images == [uid("img-a"), uid("img-b")]
    assert result.pruned_bytes == 3000
    assert result.size_before == size_before == 6000
    assert driver.get_cache_size() == size_before - result.pruned_bytes == result.size_after


# ------------------------------------------------------------ triggers/target


def test_low_watermark_prunes_to_half(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    names = [uid(f"img-{i}") for i in range(10)]
    populate(driver, names)

    result = run_prune(driver, PrunePolicy(max_size=8 * KIB, low_watermark=0.5), pause=no_pause)

    assert result.target_bytes == 4 * KIB
    assert result.images == names[:6]
    assert driver.get_cache_size() == 4 * KIB


def test_low_watermark_does_not_trigger_below_max_size(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid(f"img-{i}") for i in range(4)])
    result = run_prune(driver, PrunePolicy(max_size=8 * KIB, low_watermark=0.5), pause=no_pause)
    assert result.pruned_images == 0
    assert result.stopped_by == "not_triggered"
    assert len(image_names(driver)) == 4


def test_min_free_percent_triggers_prune(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    """100 % free space can never be had: the deficit exceeds the cache, so the
    target is 0 and every image goes, although the size is far below max."""
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c")])

    result = run_prune(driver, PrunePolicy(max_size=10**12, min_free_percent=100), pause=no_pause)

    assert result.trigger == "free_space"
    assert result.target_bytes == 0
    assert result.images == [uid("img-a"), uid("img-b"), uid("img-c")]
    assert image_names(driver) == set()


def test_min_free_bytes_larger_than_free_space_triggers_prune(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid("img-a"), uid("img-b")])
    usage = FilesystemUsage.of(driver.base_dir)

    result = run_prune(
        driver, PrunePolicy(max_size=10**12, min_free_bytes=usage.total_bytes + 1), pause=no_pause
    )

    assert result.trigger == "free_space"
    assert result.pruned_images == 2


def test_free_space_target_is_size_minus_deficit(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    names = [uid(f"img-{i}") for i in range(6)]
    populate(driver, names)
    snap = dataclasses.replace(
        take_snapshot(driver), filesystem=FilesystemUsage(free_bytes=10_000, total_bytes=1_000_000)
    )

    plan = plan_prune(snap, PrunePolicy(max_size=10**12, min_free_bytes=12_000))

    assert plan.trigger == "free_space"
    assert plan.target_bytes == 6 * KIB - 2000
    assert [v.image_id for v in plan.victims] == names[:2]  # 2048 >= 2000 freed

    # over size too: whichever target is lower wins
    plan = plan_prune(snap, PrunePolicy(max_size=5 * KIB, min_free_bytes=12_000))
    assert plan.trigger == "size"
    assert plan.target_bytes == 6 * KIB - 2000
    plan = plan_prune(snap, PrunePolicy(max_size=5 * KIB, low_watermark=0.5, min_free_bytes=12_000))
    assert plan.target_bytes == 2560
    assert len(plan.victims) == 4
    # enough free space: no trigger
    plan = plan_prune(snap, PrunePolicy(max_size=10**12, min_free_bytes=9_000))
    assert (plan.trigger, plan.victims) == (None, [])
    # percent of the filesystem: 1.5 % of 1 MB = 15000 -> deficit 5000
    plan = plan_prune(snap, PrunePolicy(max_size=10**12, min_free_percent=1.5))
    assert plan.target_bytes == 6 * KIB - 5000
    assert len(plan.victims) == 5


def test_max_idle_evicts_idle_images_whatever_the_size(driver: Driver) -> None:
    populate(driver, [uid("img-old"), uid("img-week"), uid("img-hot")])
    set_row(driver, uid("img-old"), last_accessed=T0 - 30 * DAY)
    set_row(driver, uid("img-week"), last_accessed=T0 - 7 * DAY)
    set_row(driver, uid("img-hot"), last_accessed=T0 - 3600)

    with freeze_time(at(T0)):
        result = run_prune(driver, PrunePolicy(max_size=10**12, max_idle=DAY), pause=no_pause)

    assert result.trigger == "idle"
    assert result.images == [uid("img-old"), uid("img-week")]
    assert result.idle_images == 2
    assert image_names(driver) == {uid("img-hot")}
    assert set(rows(driver)) == {uid("img-hot")}


def test_max_idle_and_size_combined(driver: Driver) -> None:
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c"), uid("img-d")])
    for i, image_id in enumerate([uid("img-a"), uid("img-b"), uid("img-c"), uid("img-d")]):
        set_row(driver, image_id, last_accessed=T0 - (10 - i) * DAY)
    set_row(driver, uid("img-d"), last_accessed=T0 - 3600)  # the cache is in use (idle.py)

    with freeze_time(at(T0)):
        # a is idle (> 9.5 days); size wants two out
        result = run_prune(
            driver, PrunePolicy(max_size=2 * KIB, max_idle=9.5 * DAY), pause=no_pause
        )

    assert result.images == [uid("img-a"), uid("img-b")]
    assert result.idle_images == 1
    assert result.trigger == "size"


def test_protected_images_are_never_evicted(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    populate(driver, [uid("img-gold"), uid("img-a"), uid("img-b")])  # gold is the LRU

    result = run_prune(
        driver,
        PrunePolicy(max_size=2 * KIB, protected_images=frozenset({uid("img-gold")})),
        pause=no_pause,
    )

    assert result.images == [uid("img-a")]
    assert result.protected_skipped == 1
    assert uid("img-gold") in image_names(driver)


def test_protected_images_never_evicted_even_missing_the_target(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid("img-p1"), uid("img-a"), uid("img-p2")])
    protected = frozenset({uid("img-p1"), uid("img-p2")})

    result = run_prune(
        driver,
        PrunePolicy(max_size=KIB, protected_images=protected),
        pause=no_pause,
    )

    assert result.images == [uid("img-a")]
    assert result.stopped_by == "no_candidates"
    assert result.size_after == 2 * KIB > result.target_bytes
    assert image_names(driver) == {uid("img-p1"), uid("img-p2")}
    assert result.protected_skipped == 2


def test_max_images_per_run_bounds_one_run(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    names = [uid(f"img-{i}") for i in range(6)]
    populate(driver, names)

    result = run_prune(driver, PrunePolicy(max_size=KIB, max_images_per_run=2), pause=no_pause)

    assert result.images == names[:2]
    assert result.stopped_by == "max_images"
    assert image_names(driver) == set(names[2:])

    again = run_prune(driver, PrunePolicy(max_size=KIB, max_images_per_run=2), pause=no_pause)
    assert again.images == names[2:4]


def test_time_budget_bounds_one_run(driver: Driver) -> None:
    names = [uid(f"img-{i}") for i in range(5)]
    populate(driver, names)
    with freeze_time(at(T0)) as frozen:
        pauses: list[float] = []

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            frozen.tick(10)  # each batch "takes" 10 s of a 15 s budget

        result = run_prune(
            driver,
            PrunePolicy(max_size=0, batch_size=1, time_budget=15),
            pause=pause,
        )

    assert result.stopped_by == "time_budget"
    assert result.pruned_images == 3
    assert result.images == names[:3]
    assert len(image_names(driver)) == 2
    assert len(pauses) == 2
    assert_file_before_row(driver)


def test_image_read_after_planning_is_skipped(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c")])
    policy = PrunePolicy(max_size=KIB)
    plan = plan_prune(take_snapshot(driver), policy)
    assert [v.image_id for v in plan.victims] == [uid("img-a"), uid("img-b")]

    read_image(driver, uid("img-a"))  # a glance-api reader gets there first
    result = execute_prune(driver, plan, policy, pause=no_pause)

    assert result.skipped_images == [uid("img-a")]
    assert result.images == [uid("img-b")]
    assert image_names(driver) == {uid("img-a"), uid("img-c")}
    assert rows(driver)[uid("img-a")][3] == 1  # its hit survived


def test_image_recached_after_planning_is_skipped(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c")])
    policy = PrunePolicy(max_size=KIB)
    plan = plan_prune(take_snapshot(driver), policy)

    # a new file behind the same, unchanged row (e.g. Glance's INSERT failed)
    fresh = base(driver, "img-b.new")
    fresh.write_bytes(b"z" * KIB)
    os.replace(fresh, base(driver, uid("img-b")))
    result = execute_prune(driver, plan, policy, pause=no_pause)

    assert result.skipped_images == [uid("img-b")]
    assert result.images == [uid("img-a")]
    assert base(driver, uid("img-b")).read_bytes() == b"z" * KIB
    assert uid("img-b") in rows(driver)


def test_victim_vanishing_after_planning_is_skipped(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c")])
    policy = PrunePolicy(max_size=KIB)
    plan = plan_prune(take_snapshot(driver), policy)
    driver.delete_cached_image(uid("img-a"))  # glance-api deleted it meanwhile

    result = execute_prune(driver, plan, policy, pause=no_pause)

    assert result.skipped_images == [uid("img-a")]
    assert result.images == [uid("img-b")]
    assert result.pruned_bytes == KIB
    assert result.errors == []


def test_file_before_row(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    names = [uid(f"img-{i}") for i in range(7)]
    populate(driver, names)

    result = run_prune(driver, PrunePolicy(max_size=3 * KIB, batch_size=2), pause=no_pause)

    assert result.images == names[:4]
    for image_id in result.images:
        assert not base(driver, image_id).exists()
        assert image_id not in rows(driver)
    assert_file_before_row(driver)
    assert set(rows(driver)) == image_names(driver) == set(names[4:])


def test_row_delete_failure_leaves_phantoms_never_orphans(
    driver: Driver, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between unlink and row delete (here: the row delete fails)
    leaves harmless phantom rows, never orphan files."""
    from glance_cache_agent.driver import DatabaseLocked

    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c")])

    def locked(*_args: object, **_kwargs: object) -> int:
        raise DatabaseLocked(driver.db_path, "database is locked")

    monkeypatch.setattr(driver, "delete_rows", locked)
    with pytest.raises(DatabaseLocked):
        run_prune(driver, PrunePolicy(max_size=KIB), pause=no_pause)

    assert image_names(driver) == {uid("img-c")}
    assert set(rows(driver)) == {uid("img-a"), uid("img-b"), uid("img-c")}
    snap = take_snapshot(driver)
    assert snap.orphans() == []
    assert snap.phantoms() == [uid("img-a"), uid("img-b")]


def test_recache_racing_the_row_delete_never_leaves_an_orphan(
    driver: Driver, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glance-api re-caches a victim between our unlink and our row delete
    (rename into place; its INSERT fails on the existing row): the row must
    stay with the new file, or the file would be an orphan nobody prunes."""
    populate(driver, [uid("img-a"), uid("img-b")])
    real_delete_rows = driver.delete_rows
    raced: list[str] = []

    def racing(image_ids: list[str], *args: object, **kwargs: object) -> int:
        if not raced:
            raced.append(image_ids[0])
            write_file(base(driver, image_ids[0]), 2048)  # Glance's commit lands here
        return real_delete_rows(image_ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(driver, "delete_rows", racing)
    result = run_prune(driver, PrunePolicy(max_size=KIB), pause=no_pause)

    assert raced == [uid("img-a")]
    assert result.images == [uid("img-a")]  # its old file was evicted
    assert base(driver, uid("img-a")).stat().st_size == 2048
    assert take_snapshot(driver).orphans() == []
    assert uid("img-a") in rows(driver)


def test_unlink_failure_keeps_image_and_row_and_continues(
    driver: Driver, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(driver, [uid("img-a"), uid("img-b"), uid("img-c"), uid("img-d")])
    stuck = str(base(driver, uid("img-a")))
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if os.fspath(path) == stuck:
            raise OSError(errno.EIO, os.strerror(errno.EIO), stuck)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    result = run_prune(driver, PrunePolicy(max_size=2 * KIB), pause=no_pause)

    assert result.images == [uid("img-b")]
    assert result.pruned_bytes == KIB
    assert len(result.errors) == 1 and stuck in result.errors[0]
    assert uid("img-a") in rows(driver) and base(driver, uid("img-a")).exists()
    assert_file_before_row(driver)


def test_pauses_happen_between_batches_only(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    names = [uid(f"img-{i}") for i in range(5)]
    populate(driver, names)
    seen: list[tuple[float, int, int]] = []

    def pause(seconds: float) -> None:
        seen.append((seconds, len(image_names(driver)), len(rows(driver))))

    result = run_prune(driver, PrunePolicy(max_size=0, batch_size=2, batch_pause=0.25), pause=pause)

    assert result.pruned_images == 5
    # 3 batches (2, 2, 1): a pause before batch 2 and before batch 3, none at the ends;
    # each pause sees the previous batch finished, files and rows alike
    assert seen == [(0.25, 3, 3), (0.25, 1, 1)]


def test_no_pause_when_batch_pause_is_zero(driver: Driver, clock: FrozenDateTimeFactory) -> None:
    populate(driver, [uid(f"img-{i}") for i in range(4)])
    calls: list[float] = []
    result = run_prune(
        driver, PrunePolicy(max_size=0, batch_size=1, batch_pause=0), pause=calls.append
    )
    assert result.pruned_images == 4
    assert calls == []


# ------------------------------------------------------------ dry run == real


def test_dry_run_changes_nothing_and_equals_real_run(
    driver: Driver, clock: FrozenDateTimeFactory
) -> None:
    names = [uid(f"img-{i}") for i in range(8)]
    populate(driver, names, 700)
    cache_image(driver, uid("img-big"), 5000)
    write_file(base(driver, "9c1d2e3f-aaaa-4bbb-8ccc-dddddddddddd"), 300)  # orphan
    base(driver, uid("img-3")).unlink()  # phantom
    write_file(base(driver, "notes.txt"), 10_000)  # foreign: never counted
    policy = PrunePolicy(
        max_size=6000, low_watermark=0.8, protected_images=frozenset({uid("img-1")}), batch_size=3
    )

    before = full_state(driver)
    dry = run_prune(driver, policy, dry_run=True)
    assert full_state(driver) == before
    real = run_prune(driver, policy, pause=no_pause)

    dry_doc, real_doc = dry.to_dict(), real.to_dict()
    assert dry_doc.pop("dry_run") is True
    assert real_doc.pop("dry_run") is False
    assert dry_doc == real_doc
    assert real_doc["pruned_images"] > 0
    assert real_doc["images"][0] == uid("img-0")
    assert uid("img-1") not in real_doc["images"] and uid("img-3") not in real_doc["images"]
    assert driver.get_cache_size() == real.size_after <= real.target_bytes == 4800
    for key in ("target_bytes", "size_before", "size_after", "pruned_images", "pruned_bytes"):
        assert isinstance(real_doc[key], int)


# ------------------------------------------------------------ property test


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[CacheSnapshot, PrunePolicy]:
    n = draw(st.integers(0, 25))
    ids = [uid(f"img-{i}") for i in range(n)]
    images: dict[str, FileInfo] = {}
    snapshot_rows: dict[str, CachedRow] = {}
    for i, image_id in enumerate(ids):
        kind = draw(st.sampled_from(["tracked", "tracked", "tracked", "orphan", "phantom"]))
        size = draw(st.integers(0, 5000))
        last = float(draw(st.integers(0, 50)))  # small range: many ties
        if kind != "phantom":
            images[image_id] = FileInfo(
                image_id, f"/c/{image_id}", size, last, last, last, i + 1, 1
            )
        if kind != "orphan":
            snapshot_rows[image_id] = CachedRow(image_id, last, last, size, 0)
    total = draw(st.integers(10**6, 10**7))
    free = draw(st.integers(0, total))
    snap = CacheSnapshot(
        taken_at=100.0,
        rows=snapshot_rows,
        base=BaseScan(images=images, others={}),
        filesystem=FilesystemUsage(free_bytes=free, total_bytes=total),
    )
    policy = PrunePolicy(
        max_size=draw(st.integers(0, 60_000)),
        low_watermark=draw(st.sampled_from([1.0, 0.9, 0.5, 0.0])),
        min_free_bytes=draw(st.sampled_from([0, 0, free + draw(st.integers(0, 20_000))])),
        max_idle=draw(st.sampled_from([None, None, 60.0, 80.0])),
        protected_images=frozenset(draw(st.lists(st.sampled_from(ids), max_size=5)) if ids else []),
        max_images_per_run=draw(st.sampled_from([None, None, 0, 1, 3])),
    )
    return snap, policy


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_plan_prune_properties(case: tuple[CacheSnapshot, PrunePolicy]) -> None:
    snap, policy = case
    plan = plan_prune(snap, policy)  # terminates: it returns
    victims = [v.image_id for v in plan.victims]
    tracked = snap.tracked()

    assert len(victims) == len(set(victims))
    assert not set(victims) & policy.protected_images
    assert set(victims) <= set(tracked)  # never an orphan, never a phantom
    if policy.max_images_per_run is not None:
        assert len(victims) <= policy.max_images_per_run
    # LRU order, ties by id, and a prefix of the candidates
    candidates = sorted(
        (row.last_accessed, key)
        for key, (row, _f) in tracked.items()
        if key not in policy.protected_images
    )
    assert [key for _la, key in candidates[: len(victims)]] == victims
    assert plan.target_bytes >= 0
    assert plan.untracked_bytes == sum(
        f.size for k, f in snap.base.images.items() if k not in snap.rows
    )

    idle_cutoff = None if policy.max_idle is None else snap.taken_at - policy.max_idle
    size_victims = [
        v for v in plan.victims if idle_cutoff is None or v.row.last_accessed >= idle_cutoff
    ]
    projected = snap.size_bytes - sum(v.file.size for v in plan.victims)
    if plan.stopped_by == "untracked":
        assert plan.untracked_bytes > plan.target_bytes
        assert size_victims == []  # nothing evicted for size in vain
    if plan.stopped_by == "target_reached" and size_victims:
        # stops within one image of the target
        assert projected <= plan.target_bytes
        assert projected + size_victims[-1].file.size > plan.target_bytes
    if plan.stopped_by == "no_candidates":
        assert len(victims) == len(candidates)
        assert projected > plan.target_bytes
    if plan.stopped_by == "not_triggered":
        assert victims == []
        assert snap.size_bytes <= policy.max_size


# ------------------------------------------------- large cache, streamed plan


def test_streamed_plan_over_many_pages_matches_full_snapshot(driver: Driver) -> None:
    """More rows than one page of the streamed LRU read, with ties across the
    page boundary: the victims are exactly the (last_accessed, id) order, and
    the streamed plan equals the plan over a full in-memory snapshot."""
    import random
    import sqlite3

    from glance_cache_agent.maintenance import take_streaming_snapshot

    n = 1203
    numbers = list(range(n))
    random.Random(7).shuffle(numbers)
    entries = [(uid(f"img-{numbers[i]:04d}"), float(i // 7)) for i in range(n)]
    for image_id, _la in entries:
        base(driver, image_id).write_bytes(b"x")
    with sqlite3.connect(driver.db_path) as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
            " VALUES (?, ?, 0.0, 0, 1)",
            entries,
        )
    base(driver, entries[5][0]).unlink()  # a phantom among the oldest
    write_file(base(driver, "0e9f8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"), 50)  # an orphan
    protected = frozenset({entries[10][0]})
    expected = [
        image_id
        for _la, image_id in sorted((la, image_id) for image_id, la in entries)
        if image_id != entries[5][0] and image_id not in protected
    ]
    policy = PrunePolicy(max_size=150, protected_images=protected)

    streamed = plan_prune(take_streaming_snapshot(driver), policy)
    full = plan_prune(take_snapshot(driver), policy)

    assert [v.image_id for v in streamed.victims] == [v.image_id for v in full.victims]
    blank = {"victims": [], "filesystem_free_bytes": 0}  # free space moves under us
    assert dataclasses.replace(streamed, **blank) == dataclasses.replace(full, **blank)
    assert streamed.untracked_bytes == 50
    assert streamed.size_before == n - 1 + 50
    evicted = (n - 1 + 50) - 150
    assert [v.image_id for v in streamed.victims] == expected[:evicted]

    result = run_prune(driver, policy, pause=no_pause)

    assert result.images == expected[:evicted]
    assert driver.get_cache_size() == 150
    assert set(rows(driver)) == set(expected[evicted:]) | protected | {entries[5][0]}
