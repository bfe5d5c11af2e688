"""Only Glance's images are images: names that are not UUIDs are foreign.

Glance issues only UUIDs. An operator's ``backup`` or ``README`` in the cache
directory, a zero-byte lock with any name, or a file in a state directory
named like a state directory is never adopted, evicted or deleted: it is
counted in ``untracked_bytes`` and listed by ``status``. Rows whose id is not
a UUID (NULL, ``queue``, ``README``) can never be served, so reconcile
removes them, and its dry run says exactly what the real run does.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from glance_cache_agent.driver import Driver, EntryKind
from glance_cache_agent.exporter.cache_state import compute_cache_state
from glance_cache_agent.maintenance import (
    CleanPolicy,
    OrphanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from tests.helpers.cache import cache_image, rows, uid, write_file
from tests.helpers.cli import cli, cli_json, make_cache

OLD = 10 * 86400  # seconds: far past every grace and stall time

#: id-shaped names Glance never issues, with their sizes (non-empty, old)
FOREIGN = {"backup": 3000, "README": 500, "img-a": 70, "7": 7}


def plant_foreign(base: Path) -> dict[str, tuple[int, int, int]]:
    """Old foreign files in the base dir and state dirs, plus a zero-byte
    non-UUID file (lock-like); returns their (size, mtime_ns, inode)."""
    paths = [write_file(base / name, size, age=OLD) for name, size in FOREIGN.items()]
    paths.append(write_file(base / "some-lock", 0, age=OLD))
    paths.append(write_file(base / "invalid" / "README", 40, age=OLD))
    paths.append(write_file(base / "incomplete" / "queue", 30, age=OLD))
    return identities(base, paths)


def identities(base: Path, paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    found = {}
    for path in paths:
        st = path.stat()
        found[str(path.relative_to(base))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def still_there(base: Path, planted: dict[str, tuple[int, int, int]]) -> None:
    assert identities(base, [base / name for name in planted]) == planted


@pytest.mark.parametrize("mode", list(OrphanPolicy))
def test_foreign_files_survive_reconcile_prune_and_clean(
    driver: Driver, mode: OrphanPolicy
) -> None:
    base = Path(driver.base_dir)
    cache_image(driver, uid("img-a"), 1000)
    write_file(base / uid("orphan"), 200, age=OLD)  # a real orphan: the policy applies to it
    planted = plant_foreign(base)

    recon = run_reconcile(driver, ReconcilePolicy(orphan_grace=0, orphans=mode))
    prune = run_prune(driver, PrunePolicy(max_size=0, batch_pause=0), pause=lambda _s: None)
    clean = run_clean(driver, CleanPolicy(stall_time=0, settle_time=0), pause=lambda _s: None)

    still_there(base, planted)
    assert recon.orphans == [uid("orphan")]  # never a foreign name
    evicted = {  # a reported orphan stays untracked, and alone exceeds max_size 0
        OrphanPolicy.ADOPT: {uid("img-a"), uid("orphan")},
        OrphanPolicy.DELETE: {uid("img-a")},
        OrphanPolicy.REPORT: set(),
    }
    assert set(prune.images) == evicted[mode]
    assert (clean.invalid_removed, clean.stalled_removed) == (0, 0)
    assert not set(rows(driver)) & {*FOREIGN, "some-lock"}


def test_delete_all_cached_keeps_foreign_and_zero_byte_non_uuid_files(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    base = cache.dir
    cache_image(cache.driver, uid("a"), 100)
    write_file(base / uid("orphan"), 10)  # zero-byte-or-not, a UUID is an image
    write_file(base / "00000000-0000-0000-0000-0000000000ab", 0)
    planted = plant_foreign(base)

    done = cli_json(cache, "delete-all-cached", "--yes")

    assert done == {"deleted": 3}
    still_there(base, planted)
    assert rows(cache.driver) == {}


@pytest.mark.parametrize("bad", ["README", "incomplete", "backup", "7"])
def test_delete_cached_of_a_foreign_name_exits_2_and_touches_nothing(
    tmp_path: Path, bad: str
) -> None:
    cache = make_cache(tmp_path)
    cache_image(cache.driver, uid("a"), 100)
    planted = plant_foreign(cache.dir)

    proc = cli("delete-cached", uid("a"), bad, config=cache.config)

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"glance-cache-agent: invalid image id {bad!r}: is not a UUID"
        " (Glance issues only UUIDs: 8-4-4-4-12 hex digits)"
    ]
    assert proc.stdout == ""
    still_there(cache.dir, planted)
    assert cache.driver.is_cached(uid("a"))  # the good id before it was not deleted either


def test_status_counts_and_lists_foreign_files(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    cache_image(cache.driver, uid("a"), 100)
    write_file(cache.path(uid("orphan")), 200)
    plant_foreign(cache.dir)
    foreign_bytes = sum(FOREIGN.values()) + 40 + 30

    status = cli_json(cache, "status")
    human = cli("status", config=cache.config)

    assert status["foreign_files"] == len(FOREIGN) + 3
    assert status["foreign"] == sorted(
        [*FOREIGN, "some-lock", "invalid/README", "incomplete/queue"]
    )
    assert status["untracked_bytes"] == 200 + foreign_bytes
    assert (status["size_bytes"], status["cached_images"], status["orphan_files"]) == (300, 2, 1)
    assert (status["incomplete_files"], status["invalid_files"]) == (0, 0)
    line = next(li for li in human.stdout.splitlines() if li.startswith("foreign files"))
    assert "README" in line and "backup" in line and "never touched" in line
    state = compute_cache_state(cache.driver, 2048, per_image_limit=0)
    assert state.untracked_bytes == 200 + foreign_bytes  # the metric reads the same state


def test_foreign_names_are_classified_foreign(driver: Driver) -> None:
    for name in ("backup", "README", "incomplete", "queue", "7", "img-a", "some-lock"):
        assert driver.layout.classify(name) is EntryKind.FOREIGN
    assert driver.layout.classify(uid("a")) is EntryKind.IMAGE
    assert driver.layout.classify(uid("a").upper()) is EntryKind.IMAGE


def insert_rows_with_bad_ids(db_path: str) -> None:
    """Rows Glance could never serve: NULL ids (twice), a state dir's name,
    an operator's file name, an empty id and an old-style integer id."""
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits)"
            " VALUES (?, 1.0, 1.0, 5, 0)",
            [(None,), (None,), ("queue",), ("README",), ("",), ("7",)],
        )


def test_reconcile_removes_rows_whose_id_is_not_a_uuid_and_its_dry_run_agrees(
    tmp_path: Path,
) -> None:
    cache = make_cache(tmp_path)
    cache_image(cache.driver, uid("a"), 100)
    cache_image(cache.driver, uid("phantom"), 100)
    os.remove(cache.path(uid("phantom")))
    planted = plant_foreign(cache.dir)  # README has a file: its row still goes, the file stays
    insert_rows_with_bad_ids(str(cache.driver.db_path))
    assert cli_json(cache, "status")["invalid_rows"] == 6

    dry = cli_json(cache, "reconcile", "--dry-run")
    real = cli_json(cache, "reconcile")

    assert dry.pop("dry_run") is True and real.pop("dry_run") is False
    assert dry == real
    assert real["invalid_rows_removed"] == 6
    assert real["invalid_rows"] == ["", "", "", "7", "README", "queue"]
    assert (real["phantoms_removed"], real["phantoms"]) == (1, [uid("phantom")])
    assert real["orphans_adopted"] == 0 and real["orphans"] == []
    assert set(rows(cache.driver)) == {uid("a")}
    with sqlite3.connect(cache.driver.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cached_images").fetchone() == (1,)
    still_there(cache.dir, planted)
    after = cli_json(cache, "status")
    assert (after["invalid_rows"], after["phantom_rows"]) == (0, 0)


def test_driver_refuses_rows_with_bad_ids_to_be_served(driver: Driver) -> None:
    """A row named like a foreign file never makes that file an image."""
    write_file(Path(driver.base_dir) / "README", 50)
    cache_image(driver, uid("a"), 100)
    insert_rows_with_bad_ids(driver.db_path)
    state = compute_cache_state(driver, 10**6, per_image_limit=10)
    assert (state.cached_images, state.size_bytes, state.invalid_rows) == (1, 100, 6)
    assert [i.image_id for i in state.top_images] == [uid("a")]
    prune = run_prune(driver, PrunePolicy(max_size=0, batch_pause=0), pause=lambda _s: None)
    assert prune.images == [uid("a")]
    assert (Path(driver.base_dir) / "README").read_bytes() == b"y" * 50


def test_uid_helper_keeps_the_names_order() -> None:
    names = ["a", "a-tie", "ab", "b", "img-10", "img-9", "orphan-1", "z"]
    assert sorted(uid(n) for n in names) == [uid(n) for n in sorted(names)]
    with pytest.raises(ValueError):
        uid("x" * 17)
