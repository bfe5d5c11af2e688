"""The centralized_db store on SQLite: Glance's tables built as its migration
builds them (``tests/helpers/glance_schema.py``), a real database file, real
second connections holding real locks, and a real other uid for permissions.

The same core checks run on real PostgreSQL and MariaDB in
``tests/integration/test_centralized_store_servers.py``.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from glance_cache_agent.driver import (
    CacheDriver,
    CachedRow,
    CacheSettings,
    DatabaseLocked,
    DatabaseUnavailable,
    Driver,
    MetadataStore,
    NodeNotRegistered,
    SchemaMismatch,
    UnsupportedDatabase,
)
from glance_cache_agent.driver.centralized import open_centralized_driver
from glance_cache_agent.driver.centralized_store import CentralizedStore
from glance_cache_agent.maintenance import (
    PrunePolicy,
    run_prune,
)
from tests.helpers.cache import cache_image, uid
from tests.helpers.centralized import (
    CORE_CHECKS,
    NODE_A,
    NODE_B,
    T0,
    check_maintenance_outcomes,
    check_timestamps_right_under_any_tz,
    insert_raw,
    open_node,
    raw,
    raw_rows,
    two_nodes,
    utc,
)
from tests.helpers.dbservers import register_node
from tests.helpers.glance_schema import create_glance_schema

SECRET = "s3cret-Pw-9"
NOBODY = 65534

PROTOCOL_METHODS = sorted(
    name
    for name, value in vars(MetadataStore).items()
    if not name.startswith("_") and callable(value)
)


@pytest.mark.parametrize("check", CORE_CHECKS, ids=lambda check: check.__name__)
def test_core_check(
    check: Callable[[str, Path], None], glance_db_sqlite: str, tmp_path: Path
) -> None:
    check(glance_db_sqlite, tmp_path)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_timestamps_are_utc_whatever_the_tz(
    zone: str, glance_db_sqlite: str, tmp_path: Path
) -> None:
    check_timestamps_right_under_any_tz(glance_db_sqlite, tmp_path, zone)


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_offers_each_method_with_the_protocols_parameters(name: str) -> None:
    wanted = inspect.signature(getattr(MetadataStore, name)).parameters
    offered = inspect.signature(getattr(CentralizedStore, name)).parameters
    assert [(p.name, p.default) for p in offered.values()] == [
        (p.name, p.default) for p in wanted.values()
    ]


def test_drivers_name_their_store(glance_db_sqlite: str, tmp_path: Path, driver: Driver) -> None:
    a, _ = two_nodes(glance_db_sqlite, tmp_path)
    assert (a.driver_name, a.node_url, isinstance(a.store, CentralizedStore)) == (
        "centralized_db",
        NODE_A,
        True,
    )
    assert (driver.driver_name, driver.node_url) == ("sqlite", None)


# ---------------------------------------------------------------- short transactions


def test_writes_run_in_bounded_batches(glance_db_sqlite: str, tmp_path: Path) -> None:
    """1201 rows: adoption 100 per transaction, deletes 500 per transaction."""
    register_node(glance_db_sqlite, NODE_A)
    durations: list[float] = []
    a = open_node(glance_db_sqlite, tmp_path, observer=durations.append)
    ids = [uid(f"r{i}") for i in range(1201)]
    assert a.store.adopt([CachedRow(k, T0, T0, 1, 0) for k in ids]) == 1201
    assert len(durations) == 13
    durations.clear()
    assert a.store.touch_rows(ids, T0 + 1) == 1201
    assert a.store.delete_rows(ids[:1000]) == 1000
    a.store.delete_all_rows()
    assert (len(durations), a.store.list_rows()) == (3 + 2 + 1, [])


def test_whole_table_reads_come_in_pages(
    glance_db_sqlite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glance_cache_agent.driver.centralized_store as module

    monkeypatch.setattr(module, "READ_PAGE_ROWS", 3)
    a, _ = two_nodes(glance_db_sqlite, tmp_path)
    ids = sorted(uid(f"p{i}") for i in range(7))
    a.store.adopt([CachedRow(k, T0, T0, 1, 0) for k in reversed(ids)])
    assert list(a.store.iter_row_ids()) == ids
    assert sorted(r.image_id for r in a.store.list_rows()) == ids


# ---------------------------------------------------------------------- locks


@pytest.fixture
def blocker(glance_db_sqlite: str) -> Iterator[sqlite3.Connection]:
    """Node A registered, then a second connection holding SQLite's write
    lock (``BEGIN IMMEDIATE``)."""
    register_node(glance_db_sqlite, NODE_A)
    conn = sqlite3.connect(glance_db_sqlite.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def test_a_lock_conflict_is_retried_then_raised_as_database_locked(
    glance_db_sqlite: str, tmp_path: Path, blocker: sqlite3.Connection
) -> None:
    a = open_node(glance_db_sqlite, tmp_path, lock_timeout=0.0)
    pauses: list[float] = []
    a.store.db.pause = pauses.append
    with pytest.raises(DatabaseLocked) as caught:
        a.store.record_cached(uid("x"), 1, T0)
    assert pauses == [0.05, 0.1]
    assert "3 attempts" in str(caught.value)


def test_a_lock_released_between_attempts_lets_the_write_through(
    glance_db_sqlite: str, tmp_path: Path, blocker: sqlite3.Connection
) -> None:
    a = open_node(glance_db_sqlite, tmp_path, lock_timeout=0.0)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        blocker.execute("ROLLBACK")

    a.store.db.pause = pause
    a.store.record_cached(uid("x"), 1, T0)
    assert (pauses, [r.image_id for r in a.store.list_rows()]) == ([0.05], [uid("x")])


def test_adoption_racing_glance_keeps_glances_row(glance_db_sqlite: str, tmp_path: Path) -> None:
    """Glance inserts one of the batch's rows between our look and our insert:
    the batch falls back to a savepoint per row and Glance's row stays."""
    a, _ = two_nodes(glance_db_sqlite, tmp_path)
    node = a.store.node_id
    engine = a.store.db.engine
    raced: list[str] = []

    @event.listens_for(engine, "after_cursor_execute")
    def glance_inserts(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("SELECT cached_images.image_id") and not raced:
            raced.append(statement)
            cursor.connection.execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits,"
                " node_reference_id) VALUES (?, ?, ?, 77, 5, ?)",
                (uid("racer"), utc(T0).isoformat(" "), utc(T0).isoformat(" "), node),
            )

    adopted = a.store.adopt(
        [CachedRow(uid("racer"), T0, T0, 1, 0), CachedRow(uid("calm"), T0, T0, 2, 0)]
    )
    rows = raw_rows(glance_db_sqlite, node)
    assert raced and adopted == 1
    assert (rows[uid("racer")][3:5], rows[uid("calm")][3:5]) == ((77, 5), (2, 0))


# ------------------------------------------------------------------ write probe


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gca-central-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True)


PROBE = """
import sys
from glance_cache_agent.driver import CacheSettings
from glance_cache_agent.driver.centralized import open_centralized_driver
driver = open_centralized_driver(CacheSettings(cache_dir=sys.argv[2]), sys.argv[1], sys.argv[3])
print(len(driver.store.list_rows()))
try:
    driver.store.check_writable()
except Exception as exc:
    print(type(exc).__name__)
else:
    print("writable")
"""


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_check_writable_is_a_real_write_probe(shared_root: Path, owner: str) -> None:
    """As uid 65534, a database file it cannot write is DatabaseReadOnly while
    reads still work; the same file given to that uid passes; nothing changes."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another uid")
    url = f"sqlite:///{shared_root / 'glance.sqlite'}"
    engine = create_engine(url)
    create_glance_schema(engine)
    engine.dispose()
    node = register_node(url, NODE_A)
    insert_raw(url, node, uid("kept"), utc(T0), 5, 1)
    before = raw_rows(url, node)
    if owner == "nobody":
        for path in (shared_root, shared_root / "glance.sqlite"):
            os.chown(path, NOBODY, NOBODY)
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + [sys.executable, "-c", PROBE, url, str(shared_root / "cache"), NODE_A],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = "DatabaseReadOnly" if owner == "root" else "writable"
    assert result.stdout.split() == ["1", expected]
    assert raw_rows(url, node) == before


# --------------------------------------------------------------------- typed errors


def _open(url: str, tmp_path: Path, node_url: str = NODE_A) -> CacheDriver:
    return open_centralized_driver(CacheSettings(cache_dir=str(tmp_path)), url, node_url)


@pytest.mark.parametrize(
    "url, error, says",
    [
        (f"oracle://glance:{SECRET}@db/glance", UnsupportedDatabase, "'oracle' is not supported"),
        (f"glance:{SECRET}@db glance", UnsupportedDatabase, "cannot be parsed"),
        (
            f"postgresql+pg8000://glance:{SECRET}@127.0.0.1/glance",
            UnsupportedDatabase,
            "pip install 'glance-cache-agent[postgresql]'",
        ),
        (f"postgresql://glance:{SECRET}@127.0.0.1:1/glance", DatabaseUnavailable, "connect"),
        (f"mysql+pymysql://glance:{SECRET}@127.0.0.1:1/glance", DatabaseUnavailable, "connect"),
        (f"mysql://glance:{SECRET}@127.0.0.1:1/glance", DatabaseUnavailable, "connect"),
        (
            f"postgresql://glance@127.0.0.1:1/glance?password={SECRET}",
            DatabaseUnavailable,
            "password=***",
        ),
        (f"oracle://glance@db/glance?password={SECRET}", UnsupportedDatabase, "password=***"),
    ],
)
def test_a_bad_or_unreachable_database_is_one_clear_error_without_the_password(
    url: str, error: type[Exception], says: str, tmp_path: Path
) -> None:
    with pytest.raises(error) as caught:
        _open(url, tmp_path)
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("node_url", [NODE_A + "/", "http://node-a.example:9292", ""])
def test_a_node_url_without_its_exact_row_is_refused(
    node_url: str, glance_db_sqlite: str, tmp_path: Path
) -> None:
    register_node(glance_db_sqlite, NODE_A)
    register_node(glance_db_sqlite, NODE_B)
    with pytest.raises(NodeNotRegistered) as caught:
        _open(glance_db_sqlite, tmp_path, node_url)
    if node_url:
        assert f"registered: {NODE_A!r}, {NODE_B!r}" in str(caught.value)
    else:
        assert "no node URL is set" in str(caught.value)
    with raw(glance_db_sqlite) as conn:  # nothing registered by us
        assert conn.execute(text("SELECT COUNT(*) FROM node_reference")).scalar_one() == 2


def test_missing_tables_and_columns_are_named_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with raw(url) as conn:
        conn.execute(text("CREATE TABLE cached_images (id INTEGER PRIMARY KEY, image_id TEXT)"))
    with pytest.raises(SchemaMismatch) as caught:
        _open(url, tmp_path)
    message = str(caught.value)
    assert "table 'node_reference' does not exist" in message
    assert "lacks column(s) last_accessed, last_modified, size, hits, checksum" in message


# ----------------------------------------------------- the maintenance engine over it


@pytest.fixture(params=["sqlite", "centralized_db"])
def any_store(
    request: pytest.FixtureRequest, driver: Driver, glance_db_sqlite: str, tmp_path: Path
) -> tuple[CacheDriver, Callable[[], None]]:
    """A driver on either store, and how to plant a row whose id is not a UUID."""
    if request.param == "sqlite":

        def plant_sqlite() -> None:
            with sqlite3.connect(driver.db_path) as conn:
                conn.execute("INSERT INTO cached_images (image_id) VALUES ('README')")

        return driver, plant_sqlite
    a, _ = two_nodes(glance_db_sqlite, tmp_path)

    def plant_central() -> None:
        insert_raw(glance_db_sqlite, a.store.node_id, "README", utc(T0), 0, 0)

    return a, plant_central


def test_maintenance_gives_the_same_outcomes_over_both_stores(
    any_store: tuple[CacheDriver, Callable[[], None]],
) -> None:
    check_maintenance_outcomes(*any_store)


def test_prune_terminates_when_the_rows_run_out(glance_db_sqlite: str, tmp_path: Path) -> None:
    """Differs from Glance: its centralized prune loops forever once no row
    is left while the directory is still over the limit; ours ends."""
    a, _ = two_nodes(glance_db_sqlite, tmp_path)
    cache_image(a, uid("tracked"), size=100)
    for name in ("o1", "o2"):
        Path(a.base_dir, uid(name)).write_bytes(b"o" * 100)  # files without rows
    pruned = run_prune(a, PrunePolicy(max_size=50, batch_pause=0.0))
    assert (pruned.images, pruned.stopped_by) == ([], "untracked")
    pruned = run_prune(a, PrunePolicy(max_size=250, batch_pause=0.0))
    assert (pruned.images, pruned.size_after) == ([uid("tracked")], 200)
