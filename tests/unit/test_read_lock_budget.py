"""Reads hold SQLite's shared lock only while SQLite produces tuples.

Glance's writers use ``timeout=0``: a COMMIT that finds a reader's shared lock
fails at once and spends its 2 s retry budget. A read that converts rows into
objects while its cursor is still open holds that lock for the whole
conversion (290-490 ms at 100k rows). Here every conversion step of every
whole-table read runs a Glance-style write from a second connection with
``timeout=0``; it must commit, i.e. no read statement is active at that
point. Pages are made tiny so that whole-table reads span several
statements, and the results must still be complete.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from glance_cache_agent.driver import CachedRow, Driver, sqlite_store
from tests.helpers.cache import cache_image, read_image, uid

NAMES = ["a", "b", "c", "d", "e"]


class GlanceStyleProbe:
    """A write like glance-api's: ``timeout=0``, BEGIN IMMEDIATE, UPDATE, COMMIT.

    ``COMMIT`` needs SQLite's exclusive lock, which any active read
    statement (another connection's shared lock) refuses at once.
    """

    def __init__(self, db_path: str, image_id: str) -> None:
        self.db_path = db_path
        self.image_id = image_id
        self.commits = 0
        self.refused: list[str] = []

    def __call__(self) -> None:
        conn = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE cached_images SET hits = hits WHERE image_id = ?", (self.image_id,)
            )
            try:
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.OperationalError as exc:
                self.refused.append(str(exc))
                conn.execute("ROLLBACK")
        finally:
            conn.close()


@pytest.fixture
def cached(driver: Driver) -> Driver:
    """Five cached images with rows, each read once (hits 1)."""
    for name in NAMES:
        cache_image(driver, uid(name), size=100)
        read_image(driver, uid(name))
    return driver


@pytest.fixture
def probe(cached: Driver, monkeypatch: pytest.MonkeyPatch) -> Iterator[GlanceStyleProbe]:
    """Run the probe at every conversion step of the driver's reads.

    Conversion is where a row becomes a Python value: ``row_from_sqlite``
    and the sqlite store module's ``str`` calls (ids).
    Pages of two rows make every whole-table read several statements.
    """
    spy = GlanceStyleProbe(cached.db_path, uid("a"))
    from_db = sqlite_store.row_from_sqlite

    def probing_from_db(r: tuple[Any, ...], *args: Any) -> CachedRow:
        spy()
        return from_db(r, *args)

    def probing_str(value: object = "") -> str:
        spy()
        return builtins.str(value)

    monkeypatch.setattr(sqlite_store, "row_from_sqlite", probing_from_db)
    monkeypatch.setattr(sqlite_store, "str", probing_str, raising=False)
    monkeypatch.setattr(sqlite_store, "READ_PAGE_ROWS", 2)
    yield spy


READS: dict[str, tuple[Callable[[Driver], Any], Callable[[Any], Any], Any]] = {
    # name: (call, normalise the result, expected)
    "list_rows": (
        lambda d: d.store.list_rows(),
        lambda rows: sorted(r.image_id for r in rows),
        [uid(n) for n in NAMES],
    ),
    "get_cached_images": (
        lambda d: d.get_cached_images(),
        lambda rows: [(r["image_id"], r["hits"]) for r in rows],
        [(uid(n), 1) for n in NAMES],
    ),
    "rows_by_id": (
        lambda d: d.store.rows_by_id([uid(n) for n in NAMES]),
        sorted,
        [uid(n) for n in NAMES],
    ),
    "measure_base": (lambda d: d.measure_base(), lambda r: r, (500, 0, 5)),
}


@pytest.mark.parametrize("name", sorted(READS))
def test_glance_write_commits_while_read_rows_are_converted(
    cached: Driver, probe: GlanceStyleProbe, name: str
) -> None:
    call, normalise, expected = READS[name]

    result = call(cached)

    assert normalise(result) == expected
    assert probe.commits > 0, "the conversion hook never ran"
    assert probe.refused == [], f"{name} converted rows while its read statement held the lock"


def test_lru_pages_are_converted_after_their_statement(
    cached: Driver, probe: GlanceStyleProbe
) -> None:
    """Regression guard: ``iter_rows_lru`` already fetched each page before converting."""
    order = [row.image_id for row in cached.store.iter_rows_lru(page_size=2)]

    assert sorted(order) == [uid(n) for n in NAMES]
    assert probe.commits >= len(NAMES) and probe.refused == []


def test_whole_table_reads_are_paged_short_statements(
    cached: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page is its own statement, seen by the read observer: five rows
    in pages of two are three statements, and nothing is lost between pages."""
    monkeypatch.setattr(sqlite_store, "READ_PAGE_ROWS", 2)
    statements: list[float] = []
    cached.db.read_observer = statements.append

    rows = cached.store.list_rows()
    assert len(statements) == 3
    assert sorted(r.image_id for r in rows) == [uid(n) for n in NAMES]

    statements.clear()
    assert cached.measure_base() == (500, 0, 5)
    assert len(statements) == 3

    statements.clear()
    assert cached.store.total_hits() == 5
    assert len(statements) == 1
