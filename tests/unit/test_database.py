"""cache.db: Glance's schema, typed errors, and locking etiquette next to glance-api."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest

import glance_cache_agent.driver.db as db_module
from glance_cache_agent.driver import (
    CacheSettings,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    Driver,
    EntryKind,
    LockTimeout,
    SchemaMismatch,
    external_lock,
)
from glance_cache_agent.driver.errors import translate
from tests.helpers.cache import cache_image, read_image, rows, set_row, uid, write_file

GLANCE_SQLITE = (
    Path(__file__).resolve().parents[2]
    / ".venv/lib/python3.11/site-packages/glance/image_cache/drivers/sqlite.py"
)


def glance_ddl() -> str:
    """The CREATE TABLE Glance 33.0.0's sqlite driver runs in initialize_db."""
    if GLANCE_SQLITE.exists():
        source = GLANCE_SQLITE.read_text()
    else:  # installed elsewhere (e.g. CI with a different venv layout)
        glance_sqlite = pytest.importorskip("glance.image_cache.drivers.sqlite")
        source = Path(glance_sqlite.__file__).read_text()
    match = re.search(r'executescript\("""(.*?)"""\)', source, re.DOTALL)
    assert match, "Glance's DDL not found in its sqlite driver"
    return match.group(1)


def table_info(path: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA table_info(cached_images)").fetchall()


def journal_mode(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def side_files(driver: Driver) -> list[str]:
    return [
        name
        for name in os.listdir(os.path.dirname(driver.db_path))
        if name.startswith(os.path.basename(driver.db_path) + "-")
    ]


# ---------------------------------------------------------------------- schema


def test_s01_schema_is_exactly_glances(driver: Driver, tmp_path: Path) -> None:
    """s1: columns, types, defaults, primary key as Glance's own DDL creates them."""
    glance_db = tmp_path / "glance.db"
    with sqlite3.connect(glance_db) as conn:
        conn.executescript(glance_ddl())
    expected = table_info(str(glance_db))
    assert [c[1] for c in expected] == [
        "image_id",
        "last_accessed",
        "last_modified",
        "size",
        "hits",
        "checksum",
    ]
    assert table_info(driver.db_path) == expected
    with sqlite3.connect(driver.db_path) as conn:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        assert conn.execute("SELECT count(*) FROM cached_images").fetchone() == (0,)
    tables = [o[1] for o in objects if o[0] == "table"]
    assert tables == ["cached_images"]
    for kind, name, _tbl, sql in objects:
        if kind == "index" and name != "sqlite_autoindex_cached_images_1":
            # DESIGN 3: the only index we may add is one on last_accessed.
            assert sql is not None and "last_accessed" in sql, name
    assert any(o[1] == "sqlite_autoindex_cached_images_1" for o in objects)


def test_s04_column_defaults(driver: Driver) -> None:
    """s4: insert only image_id -> 0.0, 0.0, 0, 0, NULL (with Glance's types)."""
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute("INSERT INTO cached_images (image_id) VALUES ('x')")
        row = conn.execute(
            "SELECT last_accessed, last_modified, size, hits, checksum,"
            " typeof(last_accessed), typeof(last_modified), typeof(size), typeof(hits)"
            " FROM cached_images WHERE image_id = 'x'"
        ).fetchone()
    assert row == (0.0, 0.0, 0, 0, None, "real", "real", "integer", "integer")
    # And our driver reads such a row like Glance's.
    assert driver.get_cached_images() == [
        {"image_id": "x", "hits": 0, "last_accessed": 0.0, "last_modified": 0.0, "size": 0}
    ]


def test_glance_created_db_is_accepted(make_driver: Callable[..., Driver], cache_dir: Path) -> None:
    """A cache.db created by Glance's DDL is used as is (no schema change)."""
    cache_dir.mkdir()
    db = cache_dir / "cache.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(glance_ddl())
        conn.execute("INSERT INTO cached_images VALUES ('g', 1.5, 1.5, 3, 2, NULL)")
        before = conn.execute("SELECT sql FROM sqlite_master").fetchall()
    driver = make_driver()
    assert driver.check_database() == []
    assert rows(driver) == {"g": (1.5, 1.5, 3, 2)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sql FROM sqlite_master").fetchall() == before


def test_s03_initialize_is_idempotent_and_keeps_rows(driver: Driver) -> None:
    """s3: three rows survive initialize_db/configure; the schema does not change."""
    for image_id in (uid("a"), uid("b"), uid("c")):
        cache_image(driver, image_id, size=3)
    read_image(driver, uid("b"))
    before = rows(driver)
    with sqlite3.connect(driver.db_path) as conn:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    driver.initialize_db()
    driver.configure()
    Driver(driver.settings).configure()
    assert rows(driver) == before and len(before) == 3
    with sqlite3.connect(driver.db_path) as conn:
        assert (
            conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            == schema
        )


def test_initialize_db_refuses_a_table_with_other_columns(cache_dir: Path) -> None:
    """A db whose cached_images lacks Glance's columns is a SchemaMismatch, not silently used."""
    cache_dir.mkdir()
    with sqlite3.connect(cache_dir / "cache.db") as conn:
        conn.execute("CREATE TABLE cached_images (image_id TEXT PRIMARY KEY, size INTEGER)")
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    with pytest.raises(SchemaMismatch, match="last_accessed"):
        driver.configure()
    with pytest.raises(SchemaMismatch, match="lacks column"):
        driver.check_database()


# ---------------------------------------------------------------- journal mode


def test_s05_journal_mode_stays_delete_after_every_operation(
    tmp_path: Path, cache_dir: Path
) -> None:
    """s5: PRAGMA journal_mode is 'delete' after each operation; no -wal/-shm appear."""
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    write_file(cache_dir / "incomplete" / uid("stale"), age=10 * 86400)
    write_file(cache_dir / "invalid" / uid("bad"))
    write_file(cache_dir / uid("orphan"), size=7)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("configure", driver.configure),
        ("initialize_db", driver.initialize_db),
        ("cache", lambda: cache_image(driver, uid("a"))),
        ("cache again", lambda: cache_image(driver, uid("a"), size=20)),
        ("read", lambda: read_image(driver, uid("a"))),
        ("queue", lambda: driver.queue_image(uid("q"))),
        ("hit count", lambda: driver.get_hit_count(uid("a"))),
        ("list", driver.get_cached_images),
        ("lru", driver.get_least_recently_accessed),
        ("size", driver.get_cache_size),
        ("adopt", lambda: driver.adopt_files([driver.scan_base().images[uid("orphan")]])),
        ("set sizes", lambda: driver.store.set_sizes([(uid("a"), 1)])),
        ("rows", lambda: driver.store.rows_by_id([uid("a")])),
        ("hits", driver.store.total_hits),
        ("check", driver.check_database),
        ("clean", lambda: driver.clean(stall_time=60)),
        ("delete", lambda: driver.delete_cached_image(uid("a"))),
        ("delete rows", lambda: driver.delete_rows([uid("orphan")])),
        ("delete all", driver.delete_all_cached_images),
    ]
    for name, step in steps:
        step()
        assert journal_mode(driver.db_path) == "delete", name
        assert side_files(driver) == [], name


def test_journal_mode_is_never_changed_even_from_wal(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    """The journal mode is the file's business: a WAL database stays WAL."""
    cache_dir.mkdir()
    conn = sqlite3.connect(cache_dir / "cache.db")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.close()
    driver = make_driver()
    cache_image(driver, uid("a"))
    read_image(driver, uid("a"))
    driver.delete_all_cached_images()
    assert journal_mode(driver.db_path) == "wal"


# -------------------------------------------------------------- path resolution


def test_s06_relative_db_name_is_joined_to_the_cache_dir(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    driver = make_driver(db="other.db")
    assert driver.db_path == str(cache_dir / "other.db")
    assert (cache_dir / "other.db").is_file()
    assert not (cache_dir / "cache.db").exists()
    assert driver.layout.classify("other.db") is EntryKind.DATABASE


def test_s06_dot_slash_db_name_is_still_the_database(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    """Differs from Glance: './cache.db' is normalised, so it is never counted or deleted."""
    driver = make_driver(db="./cache.db")
    assert driver.db_path == str(cache_dir / "cache.db")
    cache_image(driver, uid("a"), size=10)
    assert driver.get_cache_size() == 10
    assert driver.delete_all_cached_images() == 1
    assert (cache_dir / "cache.db").is_file()


def test_s06_absolute_db_name_is_used_as_is(
    make_driver: Callable[..., Driver], cache_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = elsewhere / "glance-cache.db"
    driver = make_driver(db=str(db))
    assert driver.db_path == str(db)
    assert db.is_file()
    assert not (cache_dir / "cache.db").exists()
    assert not any(name.endswith(".db") for name in os.listdir(cache_dir))
    cache_image(driver, uid("a"), size=4)
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT image_id, size FROM cached_images").fetchall()
    assert found == [(uid("a"), 4)]


# ----------------------------------------------------------------- typed errors


def test_missing_db_is_typed_and_never_created(cache_dir: Path) -> None:
    """Differs from Glance: only initialize_db creates the db; others raise DatabaseMissing."""
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    for call in (
        driver.get_cached_images,
        driver.check_database,
        driver.store.total_hits,
        driver.get_least_recently_accessed,
        driver.delete_all_cached_images,
    ):
        with pytest.raises(DatabaseMissing, match="does not exist"):
            call()
        assert not os.path.exists(driver.db_path)
    assert isinstance(DatabaseMissing("p", "m"), DatabaseError)
    driver.initialize_db()
    assert os.path.isfile(driver.db_path)
    assert driver.get_cached_images() == []


def zero_header(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(b"\x00" * 100)


def test_zeroed_header_is_database_corrupt(driver: Driver) -> None:
    """Differs from Glance (which swallows it): 'file is not a database' -> DatabaseCorrupt."""
    cache_image(driver, uid("a"))
    zero_header(driver.db_path)
    for call in (
        driver.get_cached_images,
        driver.check_database,
        driver.initialize_db,
        driver.store.total_hits,
        lambda: driver.get_hit_count(uid("a")),
        lambda: driver.delete_cached_image(uid("a")),
    ):
        with pytest.raises(DatabaseCorrupt, match="not a database"):
            call()


def test_damaged_page_is_reported_by_check_database(driver: Driver) -> None:
    """A damaged b-tree page: check_database lists the problem or raises DatabaseCorrupt.

    Differs from Glance: Glance has no check and swallows the errors such a page causes.
    """
    with sqlite3.connect(driver.db_path) as conn:
        conn.executemany(
            "INSERT INTO cached_images (image_id, size) VALUES (?, ?)",
            ((f"{i:036d}", i) for i in range(3000)),
        )
    assert driver.check_database() == []
    page_size = 4096
    with sqlite3.connect(driver.db_path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    assert os.path.getsize(driver.db_path) > 10 * page_size
    with open(driver.db_path, "r+b") as f:
        f.seek(5 * page_size)
        f.write(b"\xff" * page_size)
    try:
        problems = driver.check_database()
    except DatabaseCorrupt:
        return
    assert problems, "quick_check must report the damaged page"
    assert any("Page" in p or "malformed" in p for p in problems)


def test_db_without_the_table_is_schema_mismatch(cache_dir: Path) -> None:
    """Differs from Glance: 'no such table' is SchemaMismatch (Glance returns None / crashes)."""
    cache_dir.mkdir()
    with sqlite3.connect(cache_dir / "cache.db") as conn:
        conn.execute("CREATE TABLE something_else (x)")
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.set_paths()
    with pytest.raises(SchemaMismatch, match="cached_images"):
        driver.get_cached_images()
    with pytest.raises(SchemaMismatch, match="does not exist"):
        driver.check_database()
    with pytest.raises(SchemaMismatch):
        driver.get_least_recently_accessed()
    with pytest.raises(SchemaMismatch):
        driver.delete_all_cached_images()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("database is locked", DatabaseLocked),
        ("database table is locked", DatabaseLocked),
        ("file is not a database", DatabaseCorrupt),
        ("database disk image is malformed", DatabaseCorrupt),
        ("attempt to write a readonly database", DatabaseReadOnly),
        ("no such table: cached_images", SchemaMismatch),
        ("no such column: hits", SchemaMismatch),
        ("unable to open database file", DatabaseMissing),
        ("disk I/O error", DatabaseError),
    ],
)
def test_translate_maps_sqlite_messages_to_typed_errors(message: str, expected: type) -> None:
    err = translate("/c/cache.db", sqlite3.OperationalError(message))
    assert type(err) is expected
    assert err.path == "/c/cache.db"
    assert message in str(err)


def test_check_database_ok(driver: Driver) -> None:
    cache_image(driver, uid("a"))
    assert driver.check_database() == []


# ----------------------------------------------------------- locking etiquette


class LockHolder:
    """Another connection holding BEGIN IMMEDIATE until released (a busy glance-api)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE cached_images SET hits = hits WHERE 0")
            self.locked.set()
            self.release.wait(30)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def __enter__(self) -> LockHolder:
        self.thread.start()
        assert self.locked.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(10)


def test_write_waits_for_the_lock_and_succeeds_once_released(driver: Driver) -> None:
    """A real busy timeout: the write waits instead of failing (Glance uses timeout=0)."""
    cache_image(driver, uid("w"))
    done = threading.Event()
    outcome: dict[str, object] = {}

    def writer() -> None:
        try:
            driver.delete_cached_image(uid("w"))
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported to the test thread below
            outcome["error"] = exc
        finally:
            done.set()

    with LockHolder(driver.db_path) as holder:
        thread = threading.Thread(target=writer)
        thread.start()
        # The holder keeps its lock for a moment: the writer must still be waiting.
        assert not done.wait(0.3), outcome
        assert not driver.is_cached(uid("w"))  # file first ...
        assert uid("w") in rows(driver)  # ... row still there while the lock is held
        holder.release.set()
        assert done.wait(10)
        thread.join(10)
    assert outcome == {"ok": True}
    assert rows(driver) == {}


def test_busy_timeout_exceeded_is_database_locked(make_driver: Callable[..., Driver]) -> None:
    driver = make_driver(busy_timeout=0.2)
    cache_image(driver, uid("w"))
    holder = sqlite3.connect(driver.db_path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with (
            pytest.raises(DatabaseLocked, match="locked") as info,
            driver.open_for_read(uid("w")) as f,
        ):
            assert f.read() == b"x" * 1024
        waited = time.monotonic() - started
        assert info.value.path == driver.db_path
        assert waited >= 0.15, "the busy timeout must actually be waited"
        with pytest.raises(DatabaseLocked):
            driver.store.set_sizes([(uid("w"), 1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rows(driver)[uid("w")][2:] == (1024, 0)  # nothing was half-written


def test_initialize_db_takes_glances_init_lock(
    make_driver: Callable[..., Driver], cache_dir: Path
) -> None:
    """initialize_db waits for image_cache_db_init; held too long -> LockTimeout."""
    driver = make_driver(busy_timeout=0.2)
    assert (cache_dir / "image_cache_db_init").is_file()
    outcome: dict[str, object] = {}

    def init() -> None:
        try:
            driver.initialize_db()
        except Exception as exc:  # noqa: BLE001 - reported to the test thread below
            outcome["error"] = exc

    with external_lock(str(cache_dir), "image_cache_db_init"):
        thread = threading.Thread(target=init)
        thread.start()
        thread.join(10)
    assert isinstance(outcome.get("error"), LockTimeout)
    driver.initialize_db()  # free again
    assert (cache_dir / "image_cache_db_init").is_file()  # lock files are never deleted


def test_no_transaction_is_held_across_image_file_io(driver: Driver) -> None:
    """While the caller streams data, a Glance-style writer (timeout=0) gets the lock at once."""
    cache_image(driver, uid("r"))

    def glance_write() -> None:
        conn = sqlite3.connect(driver.db_path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        finally:
            conn.close()

    with driver.open_for_write(uid("w")) as f:
        f.write(b"a")
        glance_write()
        f.write(b"b")
    with driver.open_for_read(uid("r")) as f:
        f.read(1)
        glance_write()
        f.read()
    assert rows(driver)[uid("r")][3] == 1
    assert rows(driver)[uid("w")][2] == 2


@pytest.fixture
def traced_statements() -> Iterator[list[tuple[int, str]]]:
    """Record (connection id, SQL) for every statement the driver's connections run."""
    statements: list[tuple[int, str]] = []
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        key = id(conn)
        conn.set_trace_callback(lambda sql: statements.append((key, sql)))
        return conn

    with mock.patch.object(db_module.sqlite3, "connect", connect):
        yield statements


def test_every_write_runs_in_begin_immediate(
    driver: Driver, traced_statements: list[tuple[int, str]]
) -> None:
    cache_image(driver, uid("a"))
    cache_image(driver, uid("a"))
    read_image(driver, uid("a"))
    driver.store.set_sizes([(uid("a"), 3)])
    info = driver.scan_base().images[uid("a")]
    driver.delete_rows([uid("a")])
    driver.adopt_files([info])
    with pytest.raises(RuntimeError), driver.open_for_write(uid("b")) as f:
        f.write(b"partial")
        raise RuntimeError("source failed")
    driver.delete_cached_image(uid("a"))
    driver.delete_all_cached_images()
    dml = re.compile(r"^\s*(INSERT|UPDATE|DELETE)", re.IGNORECASE)
    in_txn: dict[int, bool] = {}
    writes = 0
    for conn, sql in traced_statements:
        upper = sql.strip().upper()
        assert upper != "BEGIN" and not upper.startswith("BEGIN DEFERRED"), sql
        assert "JOURNAL_MODE" not in upper, sql
        if upper == "BEGIN IMMEDIATE":
            in_txn[conn] = True
        elif upper in ("COMMIT", "ROLLBACK"):
            in_txn[conn] = False
        elif dml.match(sql):
            writes += 1
            assert in_txn.get(conn), f"write outside BEGIN IMMEDIATE: {sql}"
    assert writes >= 9


def test_txn_observer_receives_write_durations(cache_dir: Path) -> None:
    durations: list[float] = []
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)), txn_observer=durations.append)
    driver.configure()
    assert durations == []
    cache_image(driver, uid("a"))
    assert len(durations) == 1
    read_image(driver, uid("a"))
    assert len(durations) == 2
    driver.get_cached_images()
    driver.get_hit_count(uid("a"))
    driver.store.total_hits()
    assert len(durations) == 2  # reads are not write transactions
    with pytest.raises(ValueError), driver.open_for_write(uid("b")) as f:
        f.write(b"p")
        raise ValueError("boom")
    assert len(durations) == 3  # the rollback's row delete
    driver.delete_cached_image(uid("a"))
    assert len(durations) == 4
    assert all(isinstance(d, float) and 0 <= d < 2.0 for d in durations), durations


def test_write_transaction_observer_sees_rolled_back_transaction(
    driver: Driver, cache_dir: Path
) -> None:
    """A write that fails inside BEGIN IMMEDIATE is rolled back and still observed."""
    durations: list[float] = []
    observed = Driver(driver.settings, txn_observer=durations.append)
    cache_image(observed, uid("a"))
    with pytest.raises(DatabaseError, match="UNIQUE"), observed.db.writing() as conn:
        conn.execute("UPDATE cached_images SET hits = 5 WHERE image_id = ?", (uid("a"),))
        conn.execute("INSERT INTO cached_images (image_id) VALUES (?)", (uid("a"),))
    assert rows(observed)[uid("a")][3] == 0  # the UPDATE was rolled back
    assert len(durations) == 2


def test_set_row_helper_and_driver_agree(driver: Driver) -> None:
    """Sanity for the shared helpers these tests rely on."""
    cache_image(driver, uid("a"))
    set_row(driver, uid("a"), hits=4, last_accessed=12.5)
    assert driver.get_hit_count(uid("a")) == 4
    assert driver.get_cached_images()[0]["last_accessed"] == 12.5
