"""Every Driver method, and the contract's scenarios 1-32 (section 5) for the sqlite driver.

Tests named ``test_sNN_...`` map to scenario NN of
../shared/reference/glance-cache-contract.md section 5. Where we deliberately
differ from Glance the docstring says "differs from Glance: ..." and the test
asserts our behaviour (docs/compatibility.md lists every difference).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from freezegun import freeze_time

import glance_cache_agent.driver.layout as layout_module
from glance_cache_agent.driver import (
    BadDriverConfiguration,
    CacheDirectoryError,
    CachedRow,
    CacheSettings,
    DatabaseLocked,
    DatabaseMissing,
    Driver,
    EntryKind,
    delete_cached_file,
)
from tests.helpers.cache import cache_image, read_image, rows, set_row, uid, write_file

T0 = 1_800_000_000.0  # a fixed "now" for freezegun (2027-01-15)


def frozen(at: float = T0) -> Any:
    return freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)), tz_offset=0)


def listing(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.exists() else set()


@contextlib.contextmanager
def vanishing(*victims: Path) -> Iterator[None]:
    """Make ``victims`` really disappear between a directory listing and the stat of its entries."""
    real_scandir = os.scandir

    class Listed:
        def __init__(self, entries: list[os.DirEntry[str]]) -> None:
            self.entries = entries

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self.entries)

        def __enter__(self) -> Listed:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def scandir(path: str) -> Listed:
        with real_scandir(path) as it:
            entries = list(it)
        for victim in victims:
            if os.path.dirname(victim) == os.path.abspath(path) and victim.exists():
                victim.unlink()
        return Listed(entries)

    with mock.patch.object(layout_module.os, "scandir", scandir):
        yield


@contextlib.contextmanager
def unlink_fails(path: Path, err: int = errno.EACCES) -> Iterator[None]:
    """Make os.unlink of exactly ``path`` fail with ``err`` (root ignores chmod)."""
    real_unlink = os.unlink

    def unlink(target: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(target) == str(path):
            raise OSError(err, os.strerror(err), str(path))
        real_unlink(target, *args, **kwargs)

    with mock.patch("os.unlink", unlink):
        yield


@contextlib.contextmanager
def unlinks_seen() -> Iterator[list[str]]:
    """Record every path the driver's Python code unlinks (they are still unlinked)."""
    real_unlink = os.unlink
    seen: list[str] = []

    def unlink(target: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(os.fspath(target))
        real_unlink(target, *args, **kwargs)

    with mock.patch("os.unlink", unlink):
        yield seen


# =============================================================== initialisation


def test_s01_configure_creates_state_dirs_and_db(cache_dir: Path) -> None:
    """s1: fresh init -> incomplete/, invalid/, queue/ and cache.db with zero rows."""
    assert not cache_dir.exists()
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    assert driver.configure() is None
    for state in ("incomplete", "invalid", "queue"):
        assert (cache_dir / state).is_dir()
    assert (cache_dir / "cache.db").is_file()
    assert driver.db_path == str(cache_dir / "cache.db")
    assert rows(driver) == {}
    assert driver.get_cached_images() == []
    # Glance's oslo lock for db creation lives in the cache dir by default.
    assert (cache_dir / "image_cache_db_init").is_file()
    assert driver.get_cache_size() == 0


def test_configure_twice_is_harmless(driver: Driver) -> None:
    cache_image(driver, uid("a"))
    driver.configure()
    assert set(rows(driver)) == {uid("a")}
    assert driver.is_cached(uid("a"))


@pytest.mark.parametrize("missing", [None, ""])
def test_s02_missing_cache_dir_is_a_configuration_error(
    tmp_path: Path, missing: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s2: image_cache_dir unset -> configuration error, no files created (not even in cwd)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadDriverConfiguration, match="no cache directory"):
        Driver(CacheSettings(cache_dir=missing))
    assert os.listdir(tmp_path) == []


def test_set_paths_creates_dirs_but_no_database(cache_dir: Path) -> None:
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    assert listing(cache_dir) == {"incomplete", "invalid", "queue"}
    driver.set_paths()  # idempotent
    assert listing(cache_dir) == {"incomplete", "invalid", "queue"}


def test_set_paths_refuses_a_file_in_place_of_the_cache_dir(cache_dir: Path) -> None:
    cache_dir.write_bytes(b"not a dir")
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    with pytest.raises(CacheDirectoryError, match="not a directory"):
        driver.configure()
    assert cache_dir.read_bytes() == b"not a dir"


def test_initialize_db_creates_the_db_and_lock_in_lock_path(
    cache_dir: Path, tmp_path: Path
) -> None:
    locks = tmp_path / "locks"
    driver = Driver(CacheSettings(cache_dir=str(cache_dir), lock_path=str(locks)))
    driver.set_paths()
    assert not os.path.exists(driver.db_path)
    driver.initialize_db()
    assert os.path.isfile(driver.db_path)
    assert (locks / "image_cache_db_init").is_file()
    assert not (cache_dir / "image_cache_db_init").exists()


DB_CALLS: list[tuple[str, Callable[[Driver], object]]] = [
    ("get_cached_images", lambda d: d.get_cached_images()),
    ("get_least_recently_accessed", lambda d: d.get_least_recently_accessed()),
    ("get_hit_count", lambda d: d.get_hit_count(uid("present"))),
    ("delete_cached_image", lambda d: d.delete_cached_image(uid("present"))),
    ("delete_all_cached_images", lambda d: d.delete_all_cached_images()),
    ("check_database", lambda d: d.check_database()),
    ("open_for_read", lambda d: read_image(d, uid("present"))),
    ("open_for_write", lambda d: cache_image(d, uid("new"))),
    ("rows_by_id", lambda d: d.store.rows_by_id([uid("present")])),
    ("delete_rows", lambda d: d.delete_rows([uid("present")])),
    ("adopt_files", lambda d: d.adopt_files([d.scan_base().images[uid("present")]])),
    ("set_sizes", lambda d: d.store.set_sizes([(uid("present"), 1)])),
    ("total_hits", lambda d: d.store.total_hits()),
]


@pytest.mark.parametrize("call", DB_CALLS, ids=[c[0] for c in DB_CALLS])
def test_missing_db_is_only_created_by_initialize_db(
    cache_dir: Path, call: tuple[str, Callable[[Driver], object]]
) -> None:
    """Differs from Glance: a missing db raises DatabaseMissing; only initialize_db creates it."""
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    write_file(cache_dir / uid("present"), size=3)
    with pytest.raises(DatabaseMissing, match="does not exist"):
        call[1](driver)
    assert not os.path.exists(driver.db_path)
    assert not any(name.startswith("cache.db") for name in os.listdir(cache_dir))


def test_file_only_methods_work_without_a_db(cache_dir: Path) -> None:
    """Queue and state checks are pure file operations, as in Glance."""
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    assert driver.queue_image(uid("q")) is True
    assert driver.get_queued_images() == [uid("q")]
    assert driver.is_cacheable(uid("q"))
    assert driver.get_cache_size() == 0
    assert not os.path.exists(driver.db_path)


# ============================================================== size accounting


def test_s07_empty_cache_size_is_zero(driver: Driver) -> None:
    assert driver.get_cache_size() == 0


def test_s08_ten_images(driver: Driver) -> None:
    for i in range(10):
        cache_image(driver, uid(str(i)), size=1024)
    assert driver.get_cache_size() == 10240


def test_s09_size_excludes_lock_files_and_db(driver: Driver, cache_dir: Path) -> None:
    """s9, differs from Glance: lock files (and the db) never count, even with bytes in them.

    Glance counts every non-db file: oslo locks are empty, but the xattr probe
    ``checkme`` (3 bytes) counts there. We give the lock files bytes to prove it.
    """
    cache_image(driver, uid("img"), size=1000)
    for lock in ("image_cache_db_init", "glance-cache-prune", "glance-cache-clean", "glance-cache"):
        write_file(cache_dir / lock, size=0)
    write_file(cache_dir / "checkme", size=3)  # the xattr driver's probe file
    write_file(cache_dir / "sqlite_centralized_migrate", size=11)
    assert (cache_dir / "cache.db").stat().st_size > 0
    assert driver.get_cache_size() == 1000
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("img"))]
    others = driver.scan_base().others
    assert sorted(i.name for i in others[EntryKind.LOCK_FILE]) == [
        "checkme",
        "glance-cache",
        "glance-cache-clean",
        "glance-cache-prune",
        "image_cache_db_init",
        "sqlite_centralized_migrate",
    ]
    assert [i.name for i in others[EntryKind.DATABASE]] == ["cache.db"]


def test_s10_subdirectories_are_not_counted(driver: Driver, cache_dir: Path) -> None:
    """s10 [G]: incomplete/, invalid/ and queue/ do not count toward size."""
    cache_image(driver, uid("a"), size=100)
    write_file(cache_dir / "incomplete" / uid("a1"), size=5000)
    write_file(cache_dir / "invalid" / uid("b"), size=3000)
    write_file(cache_dir / "queue" / uid("c"), size=0)
    assert driver.get_cache_size() == 100


def test_s11_orphan_counts_in_size(driver: Driver, cache_dir: Path) -> None:
    """s11 [G]: an orphan (file without row) counts in size; it is not listed."""
    cache_image(driver, uid("a"), size=100)
    write_file(cache_dir / uid("orphan"), size=3000)
    assert driver.get_cache_size() == 3100
    assert [r["image_id"] for r in driver.get_cached_images()] == [uid("a")]
    assert uid("orphan") in driver.scan_base().images


def test_s12_size_excludes_sqlite_side_files(driver: Driver, cache_dir: Path) -> None:
    """s12, differs from Glance: cache.db-journal/-wal/-shm never count and are never deleted."""
    cache_image(driver, uid("a"), size=100)
    write_file(cache_dir / "cache.db-journal", size=512)
    write_file(cache_dir / "cache.db-wal", size=100)
    write_file(cache_dir / "cache.db-shm", size=32768)
    assert driver.get_cache_size() == 100
    scan = driver.scan_base()
    assert sorted(i.name for i in scan.others[EntryKind.DB_SIDE_FILE]) == [
        "cache.db-journal",
        "cache.db-shm",
        "cache.db-wal",
    ]
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("a"))]
    # SQLite itself may roll back or remove a (here bogus) journal when the db is
    # opened; what we check is that *our* code never unlinks a side file.
    with unlinks_seen() as unlinked:
        assert driver.delete_all_cached_images() == 1
    assert unlinked == [str(cache_dir / uid("a"))]


def test_foreign_files_are_not_counted_or_deleted(driver: Driver, cache_dir: Path) -> None:
    """Differs from Glance: names that are not UUIDs (backups, editor files, an
    id-shaped ``backup`` or ``README``, a zero-byte lock) are foreign."""
    cache_image(driver, uid("a"), size=10)
    foreign = ("cache.db.bak", ".a.swp", "notes.txt", "backup", "README", "img-a", "7")
    for name in foreign:
        write_file(cache_dir / name, size=77)
    write_file(cache_dir / "some-lock", size=0)
    assert driver.get_cache_size() == 10
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("a"))]
    assert driver.delete_all_cached_images() == 1
    assert {*foreign, "some-lock"} <= listing(cache_dir)


def test_symlinks_are_never_counted_followed_or_deleted(
    driver: Driver, cache_dir: Path, tmp_path: Path
) -> None:
    """Differs from Glance: a symlink (even named like an image) pointing outside is ignored."""
    outside = write_file(tmp_path / "outside" / "precious", size=5000)
    cache_image(driver, uid("real"), size=10)
    links = [
        cache_dir / uid("linked"),
        cache_dir / "queue" / uid("qlink"),
        cache_dir / "invalid" / uid("ilink"),
        cache_dir / "incomplete" / uid("slink"),
    ]
    for link in links:
        link.symlink_to(outside)
    os.utime(cache_dir / "incomplete" / uid("slink"), (T0 - 10 * 86400,) * 2, follow_symlinks=False)
    assert driver.get_cache_size() == 10
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("real"))]
    assert list(driver.get_cache_files(str(cache_dir / "invalid"))) == []
    assert not driver.is_cached(uid("linked"))
    assert not driver.is_queued(uid("qlink"))
    assert not driver.is_being_cached(uid("slink"))
    assert driver.get_queued_images() == []
    assert driver.delete_all_cached_images() == 1
    assert driver.delete_all_queued_images() == 0
    driver.clean(stall_time=0)
    for link in links:
        assert link.is_symlink()
    assert outside.read_bytes() == b"y" * 5000


def test_symlinked_image_is_never_read_or_written_through(
    driver: Driver, cache_dir: Path, tmp_path: Path
) -> None:
    outside = write_file(tmp_path / "outside" / "precious", size=50)
    (cache_dir / uid("linked")).symlink_to(outside)
    with pytest.raises(OSError) as info:
        read_image(driver, uid("linked"))
    assert info.value.errno == errno.ELOOP
    (cache_dir / "incomplete" / uid("planted")).symlink_to(outside)
    with pytest.raises(OSError) as info:
        cache_image(driver, uid("planted"), size=3)
    assert info.value.errno == errno.ELOOP
    assert outside.read_bytes() == b"y" * 50
    assert uid("planted") not in rows(driver)


def test_directory_or_fifo_named_like_an_image_is_ignored(driver: Driver, cache_dir: Path) -> None:
    """Differs from Glance (is_cached is os.path.exists there): only regular files are images."""
    cache_image(driver, uid("real"), size=10)
    (cache_dir / uid("dirimage")).mkdir()
    (cache_dir / uid("dirimage") / "inner").write_bytes(b"z" * 100)
    os.mkfifo(cache_dir / uid("fifoimage"))
    (cache_dir / "queue" / uid("qdir")).mkdir()
    os.mkfifo(cache_dir / "invalid" / uid("ififo"))
    assert driver.get_cache_size() == 10
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("real"))]
    assert not driver.is_cached(uid("dirimage")) and not driver.is_cached(uid("fifoimage"))
    assert driver.get_queued_images() == []
    assert driver.delete_all_cached_images() == 1
    assert driver.delete_all_queued_images() == 0
    driver.delete_invalid_files()
    assert (cache_dir / uid("dirimage") / "inner").is_file()
    assert (cache_dir / uid("fifoimage")).exists()
    assert (cache_dir / "queue" / uid("qdir")).is_dir()
    assert (cache_dir / "invalid" / uid("ififo")).exists()


def test_file_vanishing_mid_scan_is_not_an_error(driver: Driver, cache_dir: Path) -> None:
    """Differs from Glance: a file removed between listing and stat is skipped (Glance raises)."""
    cache_image(driver, uid("a"), size=10)
    cache_image(driver, uid("b"), size=20)
    journal = write_file(cache_dir / "cache.db-journal", size=512)
    with vanishing(cache_dir / uid("a"), journal):
        assert driver.get_cache_size() == 20
    assert not (cache_dir / uid("a")).exists()
    cache_image(driver, uid("a"), size=10)
    with vanishing(cache_dir / uid("a")):
        assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("b"))]
    driver.queue_image(uid("q1"))
    driver.queue_image(uid("q2"))
    with vanishing(cache_dir / "queue" / uid("q1")):
        assert driver.get_queued_images() == [uid("q2")]
    write_file(cache_dir / "incomplete" / uid("s1"), age=3 * 86400)
    write_file(cache_dir / "incomplete" / uid("s2"), age=3 * 86400)
    with vanishing(cache_dir / "incomplete" / uid("s1")):
        driver.delete_stalled_files(time.time() - 86400)
    assert listing(cache_dir / "incomplete") == set()


# ========================================================== listing and lookups


def test_s13_listing_order_and_fields(driver: Driver) -> None:
    """s13: ordered by id; keys as Glance; hits 0, last_accessed == last_modified == now."""
    with frozen():
        for image_id in (uid("b"), uid("a"), uid("c")):
            cache_image(driver, image_id, size=11)
        listed = driver.get_cached_images()
    assert [e["image_id"] for e in listed] == [uid("a"), uid("b"), uid("c")]
    for entry in listed:
        assert set(entry) == {"image_id", "hits", "last_accessed", "last_modified", "size"}
        assert entry["hits"] == 0
        assert entry["size"] == 11
        assert isinstance(entry["last_accessed"], float)
        assert entry["last_accessed"] == entry["last_modified"] == T0


def test_get_cached_images_lists_rows_not_files(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("a"))
    write_file(cache_dir / uid("orphan"))
    assert [e["image_id"] for e in driver.get_cached_images()] == [uid("a")]


def test_s15_phantom_row(driver: Driver, cache_dir: Path) -> None:
    """s15 [G]: file gone, row kept -> still listed, not cached, hit count 0."""
    cache_image(driver, uid("a"))
    read_image(driver, uid("a"))
    (cache_dir / uid("a")).unlink()
    assert [e["image_id"] for e in driver.get_cached_images()] == [uid("a")]
    assert not driver.is_cached(uid("a"))
    assert driver.get_hit_count(uid("a")) == 0


def test_s16_orphan_file_hit_count_is_zero(driver: Driver, cache_dir: Path) -> None:
    """s16, differs from Glance: an orphan's hit count is 0 (Glance raises TypeError)."""
    write_file(cache_dir / uid("orphan"), size=3000)
    assert driver.is_cached(uid("orphan"))
    assert driver.get_cached_images() == []
    assert driver.get_hit_count(uid("orphan")) == 0


def test_s17_is_cacheable(driver: Driver, cache_dir: Path) -> None:
    assert driver.is_cacheable(uid("x"))
    write_file(cache_dir / uid("x"))
    assert not driver.is_cacheable(uid("x"))
    write_file(cache_dir / "incomplete" / uid("y"))
    assert not driver.is_cacheable(uid("y"))
    write_file(cache_dir / "queue" / uid("z"), size=0)
    write_file(cache_dir / "invalid" / uid("z"))
    assert driver.is_cacheable(uid("z"))  # queued or invalid does not block caching


def test_is_cached_is_being_cached_is_queued(driver: Driver, cache_dir: Path) -> None:
    assert (
        not driver.is_cached(uid("a"))
        and not driver.is_being_cached(uid("a"))
        and not driver.is_queued(uid("a"))
    )
    write_file(cache_dir / "incomplete" / uid("a"))
    assert driver.is_being_cached(uid("a")) and not driver.is_cached(uid("a"))
    write_file(cache_dir / "queue" / uid("a"), size=0)
    assert driver.is_queued(uid("a"))
    write_file(cache_dir / uid("a"))
    assert driver.is_cached(uid("a"))
    # Only the file counts, never the db.
    assert rows(driver) == {}


def test_get_cache_files_per_directory(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("a"))
    write_file(cache_dir / "incomplete" / uid("b"))
    write_file(cache_dir / "invalid" / uid("c"))
    write_file(cache_dir / "invalid" / ".hidden")
    driver.queue_image(uid("d"))
    assert list(driver.get_cache_files(str(cache_dir))) == [str(cache_dir / uid("a"))]
    assert list(driver.get_cache_files(str(cache_dir) + "/")) == [str(cache_dir / uid("a"))]
    assert list(driver.get_cache_files(str(cache_dir / "incomplete"))) == [
        str(cache_dir / "incomplete" / uid("b"))
    ]
    assert list(driver.get_cache_files(str(cache_dir / "invalid"))) == [
        str(cache_dir / "invalid" / uid("c"))
    ]
    assert list(driver.get_cache_files(str(cache_dir / "queue"))) == [
        str(cache_dir / "queue" / uid("d"))
    ]
    assert list(driver.get_cache_files(str(cache_dir / uid("missing")))) == []


def test_get_least_recently_accessed(driver: Driver, cache_dir: Path) -> None:
    assert driver.get_least_recently_accessed() is None
    cache_image(driver, uid("new"), size=30)
    cache_image(driver, uid("old"), size=20)
    cache_image(driver, uid("b-tie"), size=10)
    cache_image(driver, uid("a-tie"), size=5)
    set_row(driver, uid("new"), last_accessed=300.0)
    set_row(driver, uid("old"), last_accessed=100.0)
    set_row(driver, uid("b-tie"), last_accessed=200.0)
    set_row(driver, uid("a-tie"), last_accessed=200.0)
    assert driver.get_least_recently_accessed() == (uid("old"), 20)
    driver.delete_cached_image(uid("old"))
    # Ties broken by id (Glance's order is unspecified).
    assert driver.get_least_recently_accessed() == (uid("a-tie"), 5)
    # A phantom row reports size 0, as in Glance (bug 1286240).
    (cache_dir / uid("a-tie")).unlink()
    assert driver.get_least_recently_accessed() == (uid("a-tie"), 0)


def test_get_least_recently_accessed_ignores_hits(driver: Driver) -> None:
    cache_image(driver, uid("popular"))
    cache_image(driver, uid("fresh"))
    set_row(driver, uid("popular"), hits=100, last_accessed=1.0)
    set_row(driver, uid("fresh"), hits=0, last_accessed=2.0)
    assert driver.get_least_recently_accessed() == (uid("popular"), 1024)


def test_get_image_filepath(driver: Driver, cache_dir: Path) -> None:
    assert driver.get_image_filepath(uid("a")) == str(cache_dir / uid("a"))
    assert driver.get_image_filepath(uid("a"), "active") == str(cache_dir / uid("a"))
    for state in ("incomplete", "invalid", "queue"):
        assert driver.get_image_filepath(uid("a"), state) == str(cache_dir / state / uid("a"))
    with pytest.raises(ValueError, match="unknown cache state"):
        driver.get_image_filepath(uid("a"), "bogus")


def test_get_image_size(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("a"), size=1234)
    assert driver.get_image_size(uid("a")) == 1234
    set_row(driver, uid("a"), size=1)  # the file, not the row, is the truth
    assert driver.get_image_size(uid("a")) == 1234
    with pytest.raises(FileNotFoundError):
        driver.get_image_size(uid("missing"))


# ======================================================= hits and last_accessed


def test_s18_full_read_counts_a_hit(driver: Driver) -> None:
    """s18: a full read -> hits 1 and last_accessed = read time; a second -> hits 2."""
    with frozen(T0) as clock:
        cache_image(driver, uid("r"), size=100)
        clock.move_to(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + 100)))
        assert read_image(driver, uid("r")) == b"x" * 100
        assert driver.get_hit_count(uid("r")) == 1
        assert rows(driver)[uid("r")] == (T0 + 100, T0, 100, 1)
        clock.move_to(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + 200)))
        read_image(driver, uid("r"))
    assert driver.get_hit_count(uid("r")) == 2
    assert rows(driver)[uid("r")] == (T0 + 200, T0, 100, 2)
    assert driver.store.total_hits() == 2


def test_s19_read_raising_counts_no_hit(driver: Driver) -> None:
    """s19: an exception in the read body -> hits and last_accessed unchanged; it propagates."""
    cache_image(driver, uid("r"))
    before = rows(driver)[uid("r")]
    with pytest.raises(ConnectionResetError), driver.open_for_read(uid("r")) as f:
        f.read(10)
        raise ConnectionResetError("client went away")
    assert rows(driver)[uid("r")] == before
    assert driver.get_hit_count(uid("r")) == 0


def test_s19_abandoned_read_generator_counts_no_hit(driver: Driver) -> None:
    """s19: a generator holding the read is closed after one chunk -> no hit."""
    cache_image(driver, uid("r"), size=100)
    before = rows(driver)[uid("r")]

    def serve() -> Iterator[bytes]:
        with driver.open_for_read(uid("r")) as f:
            while chunk := f.read(10):
                yield chunk

    gen = serve()
    assert next(gen) == b"x" * 10
    gen.close()
    assert rows(driver)[uid("r")] == before
    # Dropped without close (garbage collected): still no hit.
    gen2 = serve()
    next(gen2)
    del gen2
    gc.collect()
    assert rows(driver)[uid("r")] == before
    # Consumed to the end: a hit.
    assert b"".join(serve()) == b"x" * 100
    assert rows(driver)[uid("r")][3] == 1


def test_s20_read_without_a_row(driver: Driver, cache_dir: Path) -> None:
    """s20: file present, no row -> the read succeeds, no row is created, no error."""
    write_file(cache_dir / uid("orphan"), size=5)
    assert read_image(driver, uid("orphan")) == b"y" * 5
    assert rows(driver) == {}


def test_s21_deleted_during_read(driver: Driver) -> None:
    """s21: the reader gets every byte of a file deleted while open; the row is gone after."""
    cache_image(driver, uid("r"), size=4096)
    with driver.open_for_read(uid("r")) as f:
        head = f.read(1)
        driver.delete_cached_image(uid("r"))
        rest = f.read()
    assert head + rest == b"x" * 4096
    assert rows(driver) == {}
    assert not driver.is_cached(uid("r"))


def test_open_for_read_missing_file(driver: Driver) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(driver, uid("missing"))
    assert rows(driver) == {}


def test_get_hit_count_not_cached_is_zero(driver: Driver) -> None:
    assert driver.get_hit_count(uid("never")) == 0


# ==================================================================== deleting


def test_s22_single_delete(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("d"))
    cache_image(driver, uid("keep"))
    assert driver.delete_cached_image(uid("d")) is None
    assert not (cache_dir / uid("d")).exists()
    assert set(rows(driver)) == {uid("keep")}
    assert not driver.is_cached(uid("d")) and driver.is_cached(uid("keep"))


def test_s23_delete_unknown_id(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("keep"))
    before = (rows(driver), listing(cache_dir))
    driver.delete_cached_image(uid("fake-image-id"))
    assert (rows(driver), listing(cache_dir)) == before


def test_s24_delete_leaves_other_states_alone(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("d"))
    for state in ("queue", "incomplete", "invalid"):
        write_file(cache_dir / state / uid("d"))
    driver.delete_cached_image(uid("d"))
    assert not (cache_dir / uid("d")).exists()
    for state in ("queue", "incomplete", "invalid"):
        assert (cache_dir / state / uid("d")).is_file()


def test_delete_removes_file_before_row(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    """Row delete fails (db locked) after the file went: a phantom row, never an orphan."""
    driver = make_driver(busy_timeout=0.05)
    cache_image(driver, uid("d"))
    holder = sqlite3.connect(driver.db_path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseLocked):
            driver.delete_cached_image(uid("d"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not (cache_dir / uid("d")).exists()
    assert uid("d") in rows(driver)


def test_s25_delete_all(driver: Driver, cache_dir: Path) -> None:
    """s25, differs from Glance: images only are deleted and counted; lock and side files stay."""
    cache_image(driver, uid("1"))
    cache_image(driver, uid("2"))
    set_row(driver, uid("2"), hits=3)
    with sqlite3.connect(driver.db_path) as conn:  # a phantom row is removed, not counted
        conn.execute("INSERT INTO cached_images (image_id) VALUES ('phantom')")
    write_file(cache_dir / "glance-cache-prune", size=0)
    write_file(cache_dir / "cache.db-wal", size=0)
    assert driver.delete_all_cached_images() == 2
    assert not (cache_dir / uid("1")).exists() and not (cache_dir / uid("2")).exists()
    assert rows(driver) == {}
    assert (cache_dir / "cache.db").is_file()
    assert (cache_dir / "image_cache_db_init").is_file()
    assert (cache_dir / "glance-cache-prune").is_file()
    assert (cache_dir / "cache.db-wal").is_file()


def test_s25_delete_all_counts_orphans_and_leaves_states(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("1"))
    write_file(cache_dir / uid("orphan"))
    driver.queue_image(uid("q"))
    write_file(cache_dir / "incomplete" / uid("i"))
    write_file(cache_dir / "invalid" / uid("v"))
    assert driver.delete_all_cached_images() == 2
    assert driver.get_cache_size() == 0
    assert driver.is_queued(uid("q")) and driver.is_being_cached(uid("i"))
    assert (cache_dir / "invalid" / uid("v")).is_file()


def test_s26_delete_all_on_empty(driver: Driver, cache_dir: Path) -> None:
    """s26, differs from Glance: returns 0 and leaves the image_cache_db_init lock file."""
    assert (cache_dir / "image_cache_db_init").is_file()
    assert driver.delete_all_cached_images() == 0
    assert (cache_dir / "image_cache_db_init").is_file()
    assert (cache_dir / "cache.db").is_file()


def test_delete_cached_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f")
    assert delete_cached_file(str(path)) is None
    assert not path.exists()
    delete_cached_file(str(path))  # already gone: not an error


def test_delete_cached_file_propagates_other_errors(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f")
    with unlink_fails(path, errno.EIO), pytest.raises(OSError) as info:
        delete_cached_file(str(path))
    assert info.value.errno == errno.EIO
    assert path.exists()
    (tmp_path / uid("d")).mkdir()
    with pytest.raises(IsADirectoryError):
        delete_cached_file(str(tmp_path / uid("d")))
    assert (tmp_path / uid("d")).is_dir()


def test_delete_invalid_files(driver: Driver, cache_dir: Path) -> None:
    """Every invalid/ file goes, whatever its age (no grace, as in Glance)."""
    write_file(cache_dir / "invalid" / uid("fresh"))
    write_file(cache_dir / "invalid" / uid("old"), age=10 * 86400)
    write_file(cache_dir / "invalid" / uid("future"), age=-86400)
    cache_image(driver, uid("a"))
    driver.queue_image(uid("q"))
    assert driver.delete_invalid_files() is None
    assert listing(cache_dir / "invalid") == set()
    assert driver.is_cached(uid("a")) and driver.is_queued(uid("q"))


# ====================================================================== clean


def test_delete_stalled_files_is_strict(driver: Driver, cache_dir: Path) -> None:
    """mtime strictly before older_than is deleted; exactly at the boundary is kept."""
    before = write_file(cache_dir / "incomplete" / uid("before"), now=T0, age=1)
    at = write_file(cache_dir / "incomplete" / uid("at"), now=T0, age=0)
    after = write_file(cache_dir / "incomplete" / uid("after"), now=T0, age=-1)
    assert driver.delete_stalled_files(T0) is None
    assert not before.exists()
    assert at.exists() and after.exists()


def test_delete_stalled_files_keeps_a_file_open_for_writing(
    driver: Driver, cache_dir: Path
) -> None:
    """Differs from Glance: an old file still open for writing is a live download and is kept."""
    live = write_file(cache_dir / "incomplete" / uid("live"), age=5 * 86400)
    dead = write_file(cache_dir / "incomplete" / uid("dead"), age=5 * 86400)
    read_only = write_file(cache_dir / "incomplete" / uid("readonly"), age=5 * 86400)
    with open(live, "ab") as writer, open(read_only, "rb"):
        driver.delete_stalled_files(time.time())
        assert live.exists()
        writer.write(b"more")
    assert not dead.exists()
    assert not read_only.exists()  # open for reading only is not a download
    driver.delete_stalled_files(time.time() + 1)
    assert not live.exists()


def test_delete_stalled_files_logs_and_skips_a_failed_delete(
    driver: Driver, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = write_file(cache_dir / "incomplete" / uid("stuck"), age=5 * 86400)
    other = write_file(cache_dir / "incomplete" / uid("other"), age=5 * 86400)
    with caplog.at_level(logging.ERROR), unlink_fails(stuck, errno.EACCES):
        driver.delete_stalled_files(time.time())
    assert stuck.exists()
    assert not other.exists()
    assert any(uid("stuck") in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_clean_default_stall_time(make_driver: Callable[..., Driver], cache_dir: Path) -> None:
    """clean() with no stall_time uses the configured one (Glance default 86400 s)."""
    driver = make_driver()
    assert driver.settings.stall_time == 86400
    with frozen():
        old = write_file(cache_dir / "incomplete" / uid("1"), now=T0, age=2 * 86400)
        new = write_file(cache_dir / "incomplete" / uid("2"), now=T0, age=3600)
        bad = write_file(cache_dir / "invalid" / uid("3"), now=T0, age=0)
        assert driver.clean() is None
    assert not old.exists() and new.exists() and not bad.exists()


def test_clean_uses_configured_stall_time(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    driver = make_driver(stall_time=600)
    with frozen():
        old = write_file(cache_dir / "incomplete" / uid("1"), now=T0, age=601)
        new = write_file(cache_dir / "incomplete" / uid("2"), now=T0, age=599)
        driver.clean()
    assert not old.exists() and new.exists()


def test_clean_explicit_stall_time_and_scope(driver: Driver, cache_dir: Path) -> None:
    """clean(stall_time) overrides the setting; base files, queue and rows are untouched."""
    cache_image(driver, uid("a"))
    driver.queue_image(uid("q"))
    write_file(cache_dir / uid("orphan"), age=10 * 86400, now=T0)
    before_rows = rows(driver)
    with frozen():
        day_old = write_file(cache_dir / "incomplete" / uid("1"), now=T0, age=86400)
        fresh = write_file(cache_dir / "incomplete" / uid("2"), now=T0, age=10)
        driver.clean(stall_time=3600)
        assert not day_old.exists() and fresh.exists()
        driver.clean(stall_time=0)
        assert not fresh.exists()
    assert rows(driver) == before_rows
    assert (
        driver.is_cached(uid("a"))
        and driver.is_queued(uid("q"))
        and (cache_dir / uid("orphan")).exists()
    )


# ======================================================================= queue


def test_s27_new_queue_entry(driver: Driver, cache_dir: Path) -> None:
    assert driver.queue_image(uid("1")) is True
    assert (cache_dir / "queue" / uid("1")).is_file()
    assert (cache_dir / "queue" / uid("1")).stat().st_size == 0
    assert driver.is_queued(uid("1"))
    assert not driver.is_cached(uid("1"))
    assert rows(driver) == {}


def test_s28_queue_twice(driver: Driver) -> None:
    assert driver.queue_image(uid("1")) is True
    assert driver.queue_image(uid("1")) is False
    assert driver.get_queued_images() == [uid("1")]


def test_s29_queue_when_cached_or_in_progress(driver: Driver, cache_dir: Path) -> None:
    cache_image(driver, uid("1"))
    assert driver.queue_image(uid("1")) is False
    write_file(cache_dir / "incomplete" / uid("2"))
    assert driver.queue_image(uid("2")) is False
    assert listing(cache_dir / "queue") == set()


def test_s30_queue_order(driver: Driver, cache_dir: Path) -> None:
    """s30: oldest mtime first, ties by name."""
    for image_id in (uid("b"), uid("a"), uid("c")):
        driver.queue_image(image_id)
    same = T0
    os.utime(cache_dir / "queue" / uid("a"), (same, same))
    os.utime(cache_dir / "queue" / uid("b"), (same, same))
    os.utime(cache_dir / "queue" / uid("c"), (1000, 1000))
    assert driver.get_queued_images() == [uid("c"), uid("a"), uid("b")]


def test_s30_queue_in_quick_succession(driver: Driver) -> None:
    for image_id in (uid("0"), uid("1"), uid("2")):
        driver.queue_image(image_id)
    assert driver.get_queued_images() == [uid("0"), uid("1"), uid("2")]


def test_s31_caching_pops_the_queue(driver: Driver, cache_dir: Path) -> None:
    driver.queue_image(uid("1"))
    driver.queue_image(uid("2"))
    cache_image(driver, uid("1"))
    assert not (cache_dir / "queue" / uid("1")).exists()
    assert driver.get_queued_images() == [uid("2")]


def test_s32_queue_deletes(driver: Driver, cache_dir: Path) -> None:
    """s32: unknown id no error; delete-all returns the count, empties queue/, leaves images."""
    driver.delete_queued_image(uid("unknown"))
    for image_id in (uid("a"), uid("b"), uid("c")):
        driver.queue_image(image_id)
    cache_image(driver, uid("cached"))
    assert driver.delete_queued_image(uid("a")) is None
    assert driver.get_queued_images() == [uid("b"), uid("c")]
    assert driver.delete_all_queued_images() == 2
    assert listing(cache_dir / "queue") == set()
    assert driver.delete_all_queued_images() == 0
    assert driver.is_cached(uid("cached")) and set(rows(driver)) == {uid("cached")}


def test_delete_all_queued_ignores_foreign_names(driver: Driver, cache_dir: Path) -> None:
    driver.queue_image(uid("a"))
    write_file(cache_dir / "queue" / ".tmp", size=0)
    assert driver.delete_all_queued_images() == 1
    assert listing(cache_dir / "queue") == {".tmp"}


# ================================================================= write path


def test_s51_good_write(driver: Driver, cache_dir: Path) -> None:
    """s51: B/1 exists, incomplete/1 and invalid/1 do not, row size = bytes written."""
    with frozen(), driver.open_for_write(uid("1")) as f:
        assert driver.is_being_cached(uid("1")) and not driver.is_cached(uid("1"))
        f.write(b"a" * 700)
        f.write(b"b" * 300)
    assert (cache_dir / uid("1")).read_bytes() == b"a" * 700 + b"b" * 300
    assert not (cache_dir / "incomplete" / uid("1")).exists()
    assert not (cache_dir / "invalid" / uid("1")).exists()
    assert rows(driver) == {uid("1"): (T0, T0, 1000, 0)}


def test_open_for_write_truncates_a_stale_incomplete_file(driver: Driver, cache_dir: Path) -> None:
    write_file(cache_dir / "incomplete" / uid("1"), size=5000)
    cache_image(driver, uid("1"), size=10)
    assert driver.get_image_size(uid("1")) == 10
    assert rows(driver)[uid("1")][2] == 10


def test_s52_write_raises(driver: Driver, cache_dir: Path) -> None:
    """s52: invalid/1 holds the partial; no incomplete/1, no B/1, no row; the error propagates."""
    with pytest.raises(OSError, match="source failed"), driver.open_for_write(uid("1")) as f:
        f.write(b"partial")
        raise OSError("source failed")
    assert (cache_dir / "invalid" / uid("1")).read_bytes() == b"partial"
    assert not (cache_dir / "incomplete" / uid("1")).exists()
    assert not (cache_dir / uid("1")).exists()
    assert rows(driver) == {}


def test_failed_write_removes_a_phantom_row(driver: Driver, cache_dir: Path) -> None:
    """Rollback of an id with no good file deletes its (phantom) row, as Glance does."""
    cache_image(driver, uid("p"))
    (cache_dir / uid("p")).unlink()
    with pytest.raises(ValueError), driver.open_for_write(uid("p")) as f:
        f.write(b"x")
        raise ValueError
    assert rows(driver) == {}


def test_later_failure_overwrites_invalid_file(driver: Driver, cache_dir: Path) -> None:
    for payload in (b"first", b"second"):
        with pytest.raises(RuntimeError), driver.open_for_write(uid("1")) as f:
            f.write(payload)
            raise RuntimeError
    assert (cache_dir / "invalid" / uid("1")).read_bytes() == b"second"


def test_s53_abandoned_write_generator(driver: Driver, cache_dir: Path) -> None:
    """s53: a generator holding the write, closed after one chunk -> invalid/1, not cached."""
    driver.queue_image(uid("1"))

    def caching_iter(chunks: list[bytes]) -> Iterator[bytes]:
        with driver.open_for_write(uid("1")) as f:
            for chunk in chunks:
                f.write(chunk)
                yield chunk

    gen = caching_iter([b"one", b"two", b"three"])
    assert next(gen) == b"one"
    gen.close()
    assert (cache_dir / "invalid" / uid("1")).read_bytes() == b"one"
    assert not (cache_dir / "incomplete" / uid("1")).exists()
    assert not driver.is_cached(uid("1"))
    assert rows(driver) == {}
    assert driver.is_queued(uid("1"))  # the queue entry stays for a retry
    # Garbage-collected without close: the same rollback.
    gen2 = caching_iter([b"uno", b"dos"])
    next(gen2)
    del gen2
    gc.collect()
    assert (cache_dir / "invalid" / uid("1")).read_bytes() == b"uno"
    assert not driver.is_cached(uid("1"))
    # Consumed to the end: committed.
    assert b"".join(caching_iter([b"a", b"b"])) == b"ab"
    assert (cache_dir / uid("1")).read_bytes() == b"ab"
    assert not driver.is_queued(uid("1"))


def test_repeated_commit_upserts(driver: Driver) -> None:
    """Differs from Glance: a second commit updates size and last_modified and keeps hits."""
    with frozen(T0) as clock:
        cache_image(driver, uid("u"), size=100)
        read_image(driver, uid("u"))
        read_image(driver, uid("u"))
        clock.move_to(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + 500)))
        cache_image(driver, uid("u"), size=200)
    last_accessed, last_modified, size, hits = rows(driver)[uid("u")]
    assert size == 200 == driver.get_image_size(uid("u"))
    assert last_modified == T0 + 500
    assert last_accessed == T0 + 500
    assert hits == 2
    assert len(driver.get_cached_images()) == 1


def test_s57_failed_recache_keeps_the_good_file_and_its_row(
    driver: Driver, cache_dir: Path
) -> None:
    """s57, differs from Glance: a failed re-cache keeps the row (Glance deletes it: orphan B/x)."""
    cache_image(driver, uid("x"), size=100)
    read_image(driver, uid("x"))
    before = rows(driver)[uid("x")]
    with pytest.raises(ConnectionError), driver.open_for_write(uid("x")) as f:
        f.write(b"partial")
        raise ConnectionError("source died")
    assert (cache_dir / uid("x")).read_bytes() == b"x" * 100
    assert (cache_dir / "invalid" / uid("x")).read_bytes() == b"partial"
    assert rows(driver)[uid("x")] == before
    assert driver.get_hit_count(uid("x")) == 1


def test_commit_with_db_missing_leaves_the_file_cached(cache_dir: Path) -> None:
    """s55-like [G]: rename before row; a failed row insert leaves B/<id>, not a partial."""
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    with pytest.raises(DatabaseMissing):
        cache_image(driver, uid("L"), size=9)
    assert (cache_dir / uid("L")).stat().st_size == 9
    assert not (cache_dir / "incomplete" / uid("L")).exists()
    assert not (cache_dir / "invalid" / uid("L")).exists()


# ================================================================= bulk helpers


def test_rows_by_id(driver: Driver) -> None:
    cache_image(driver, uid("a"), size=5)
    set_row(driver, uid("a"), hits=2, last_accessed=10.0, last_modified=9.0)
    assert driver.store.rows_by_id([]) == {}
    assert driver.store.rows_by_id([uid("a"), uid("missing")]) == {
        uid("a"): CachedRow(uid("a"), 10.0, 9.0, 5, 2)
    }
    assert driver.store.rows_by_id(iter([uid("a")])) == {
        uid("a"): CachedRow(uid("a"), 10.0, 9.0, 5, 2)
    }


def test_rows_by_id_spans_batches(driver: Driver) -> None:
    ids = [uid(f"img-{i}") for i in range(1200)]
    with sqlite3.connect(driver.db_path) as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, size) VALUES (?, ?)", ((i, 1) for i in ids)
        )
    found = driver.store.rows_by_id(ids + ["nope"])
    assert set(found) == set(ids)
    assert driver.delete_rows(ids) == 1200
    assert rows(driver) == {}


def test_rows_read_nulls_as_glance_defaults(driver: Driver) -> None:
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute(
            "INSERT INTO cached_images VALUES (?, NULL, NULL, NULL, NULL, NULL)", (uid("n"),)
        )
    assert driver.store.rows_by_id([uid("n")]) == {uid("n"): CachedRow(uid("n"), 0.0, 0.0, 0, 0)}
    assert driver.store.total_hits() == 0


def test_delete_rows(driver: Driver, cache_dir: Path) -> None:
    for image_id in (uid("a"), uid("b"), uid("c")):
        cache_image(driver, image_id)
    (cache_dir / uid("a")).unlink()
    assert driver.delete_rows([]) == 0
    assert driver.delete_rows([uid("a"), uid("b"), uid("zzz")], only_if_file_missing=True) == 1
    assert set(rows(driver)) == {uid("b"), uid("c")}
    assert driver.is_cached(uid("b"))  # the file is never touched
    assert driver.delete_rows([uid("b")]) == 1
    assert set(rows(driver)) == {uid("c")}
    assert driver.is_cached(uid("b"))


def test_adopt_files(driver: Driver, cache_dir: Path) -> None:
    orphan = write_file(cache_dir / uid("orphan"), size=3000)
    os.utime(orphan, (T0 + 50, T0))  # atime newer than mtime
    older = write_file(cache_dir / uid("older"), size=10)
    os.utime(older, (T0 - 50, T0))  # atime older than mtime
    cache_image(driver, uid("tracked"), size=7)
    set_row(driver, uid("tracked"), hits=9)
    scan = driver.scan_base().images
    assert driver.adopt_files([]) == 0
    assert driver.adopt_files([scan[uid("orphan")], scan[uid("older")], scan[uid("tracked")]]) == 2
    got = rows(driver)
    assert got[uid("orphan")] == (T0 + 50, T0, 3000, 0)
    assert got[uid("older")] == (T0, T0, 10, 0)
    assert got[uid("tracked")][2:] == (7, 9)  # an existing row wins
    assert driver.get_hit_count(uid("orphan")) == 0


def test_set_sizes(driver: Driver) -> None:
    cache_image(driver, uid("a"), size=5)
    cache_image(driver, uid("b"), size=6)
    assert driver.store.set_sizes([]) == 0
    assert driver.store.set_sizes([(uid("a"), 50), (uid("b"), 6), (uid("missing"), 1)]) == 1
    assert rows(driver)[uid("a")][2] == 50
    assert rows(driver)[uid("b")][2] == 6


def test_total_hits(driver: Driver) -> None:
    assert driver.store.total_hits() == 0
    cache_image(driver, uid("a"))
    cache_image(driver, uid("b"))
    read_image(driver, uid("a"))
    read_image(driver, uid("a"))
    read_image(driver, uid("b"))
    assert driver.store.total_hits() == 3


def test_check_database_on_a_healthy_cache(driver: Driver) -> None:
    cache_image(driver, uid("a"))
    assert driver.check_database() == []
