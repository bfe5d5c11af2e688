"""The metadata store interface: what maintenance may ask of the rows.

The next store (centralized_db) plugs in behind ``MetadataStore``. These
tests pin that the interface is the whole contract: the sqlite store offers
each of its methods with the same parameters, the maintenance engine, the
exporter's cache state and Glance's driver API run over a store that answers
nothing but the interface (a real ``cache.db`` underneath), and no module
outside ``driver/`` reaches into SQLite.
"""

from __future__ import annotations

import ast
import inspect
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import glance_cache_agent
from glance_cache_agent.driver import CacheDriver, Driver, MetadataStore
from glance_cache_agent.driver.sqlite_store import SqliteStore
from glance_cache_agent.exporter.cache_state import compute_cache_state
from glance_cache_agent.maintenance import (
    PrunePolicy,
    ReconcilePolicy,
    run_prune,
    run_reconcile,
)
from glance_cache_agent.maintenance.delete import delete_all_cached_images, delete_cached_images
from tests.helpers.cache import cache_image, read_image, set_row, uid

#: the public methods of the interface (Protocol members defined on the class)
PROTOCOL_METHODS = sorted(
    name
    for name, value in vars(MetadataStore).items()
    if not name.startswith("_") and callable(value)
)

PACKAGE = Path(glance_cache_agent.__file__).parent


class InterfaceOnly:
    """A store that forwards exactly ``MetadataStore``'s methods to a real
    store and refuses every other attribute: what runs over it uses nothing
    sqlite-specific."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.calls: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name not in PROTOCOL_METHODS:
            raise AttributeError(f"{name!r} is not part of MetadataStore")
        self.calls.add(name)
        return getattr(self._store, name)


@pytest.fixture
def interface_only(driver: Driver) -> InterfaceOnly:
    return InterfaceOnly(driver.store)


@pytest.fixture
def generic(driver: Driver, interface_only: InterfaceOnly) -> CacheDriver:
    """A CacheDriver on the same cache whose store offers only the interface."""
    return CacheDriver(driver.settings, interface_only)


def test_protocol_names_the_row_operations_maintenance_needs() -> None:
    assert PROTOCOL_METHODS == [
        "adopt",
        "check_schema",
        "check_writable",
        "delete_all_rows",
        "delete_invalid_rows",
        "delete_rows",
        "iter_row_ids",
        "iter_rows_lru",
        "list_rows",
        "newest_access",
        "record_cached",
        "record_hit",
        "rows_by_id",
        "set_sizes",
        "total_hits",
        "touch_rows",
    ]


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_sqlite_store_offers_each_method_with_the_protocols_parameters(name: str) -> None:
    wanted = inspect.signature(getattr(MetadataStore, name)).parameters
    offered = inspect.signature(getattr(SqliteStore, name)).parameters
    assert [(p.name, p.default) for p in offered.values()] == [
        (p.name, p.default) for p in wanted.values()
    ]


def test_maintenance_runs_over_nothing_but_the_interface(
    driver: Driver, generic: CacheDriver, interface_only: InterfaceOnly, cache_dir: Path
) -> None:
    """Prune, reconcile, delete and the cache state, end to end over real
    files and a real cache.db reached only through the interface."""
    for name in ("a", "b", "c", "d"):
        cache_image(generic, uid(name), size=100)
        read_image(generic, uid(name))
    (cache_dir / uid("orphan")).write_bytes(b"o" * 10)
    os.unlink(generic.get_image_filepath(uid("c")))  # phantom row
    set_row(driver, uid("d"), size=1)  # size drift
    with sqlite3.connect(driver.db_path) as conn:
        conn.execute("INSERT INTO cached_images (image_id) VALUES ('README')")

    state = compute_cache_state(generic, max_size=10_000, per_image_limit=10)
    assert (state.hits, state.orphan_files, state.phantom_rows) == (4, 1, 2)  # README too

    reconciled = run_reconcile(generic, ReconcilePolicy(orphan_grace=0.0))
    assert (reconciled.orphans_adopted, reconciled.phantoms_removed) == (1, 1)
    assert (reconciled.sizes_fixed, reconciled.invalid_rows_removed) == (1, 1)

    pruned = run_prune(generic, PrunePolicy(max_size=150, batch_pause=0.0, max_idle=1e9))
    assert pruned.images == [uid("a"), uid("b")]  # the adopted orphan is the newest
    assert generic.get_least_recently_accessed() == (uid("d"), 100)
    assert generic.get_hit_count(uid("d")) == 1

    assert delete_cached_images(generic, [uid("d")]).deleted == [uid("d")]
    assert [r["image_id"] for r in generic.get_cached_images()] == [uid("orphan")]
    assert delete_all_cached_images(generic).deleted == [uid("orphan")]
    assert driver.store.list_rows() == []
    assert {"record_cached", "record_hit", "delete_rows", "adopt"} <= interface_only.calls


def _modules_outside_driver() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if PACKAGE / "driver" not in p.parents]


def _is_database_handle(node: ast.expr) -> bool:
    """``<x>.db`` used as the sqlite ``Database`` (``driver.db.connect()``),
    not a config key such as ``cache.db``."""
    return isinstance(node, ast.Attribute) and node.attr == "db"


def _sqlite_reaches(path: Path) -> list[str]:
    """Imports of sqlite3 or the sqlite store's modules, and ``x.db.<member>``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module == "sqlite3" or module.endswith(("driver.db", "driver.sqlite_store")):
                found.append(module)
        elif isinstance(node, ast.Attribute) and _is_database_handle(node.value):
            found.append(f"line {node.lineno}: .db.{node.attr}")
    return found


def test_nothing_outside_the_driver_reaches_into_sqlite() -> None:
    modules = _modules_outside_driver()
    assert len(modules) > 20  # the scan sees the package
    reaches = {str(p.relative_to(PACKAGE)): _sqlite_reaches(p) for p in modules}
    assert {name: found for name, found in reaches.items() if found} == {}
