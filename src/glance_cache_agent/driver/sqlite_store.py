"""The ``sqlite`` metadata store: ``cached_images`` in Glance's ``cache.db``.

Every statement Glance's sqlite driver and our maintenance run against the
table lives here; ``Database`` (``db.py``) supplies connections that behave
next to a live glance-api. Timestamps are stored as Glance stores them:
``REAL`` epoch seconds from ``time.time()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from .db import SCHEMA, Database
from .errors import BadRowValue
from .ids import is_uuid
from .store import CachedRow

ROW_COLUMNS = "image_id, last_accessed, last_modified, size, hits"

#: Rows changed per write transaction in bulk operations: small enough that
#: one transaction stays far below Glance's 2 s lock budget (about 5 ms).
BATCH_ROWS = 500

#: Rows per statement of a whole-table read. A page holds SQLite's shared
#: lock, which fails Glance's COMMITs, for about 20 ms (100k rows: 5 pages):
#: a Glance write that collides with one page waits one 50 ms retry, as it
#: would for any shorter statement, and fewer pages collide less often.
READ_PAGE_ROWS = 20_000

_T = TypeVar("_T")


def row_from_sqlite(r: tuple[Any, ...], db_path: str = "cache.db") -> CachedRow:
    """A ``SELECT {ROW_COLUMNS}`` tuple as a row; NULLs read as Glance's defaults.

    A value that is not a finite number (``hits = 'many'``, written by hand:
    SQLite keeps text it cannot convert) raises BadRowValue naming
    ``db_path``, the image id and the column.

    A NULL ``image_id`` reads as ``""``: never a UUID, so such a row is never
    served or evicted, and reconcile removes it.
    """
    image_id = "" if r[0] is None else str(r[0])
    accessed, modified, size, hits = r[1], r[2], r[3], r[4]
    if type(accessed) is float and type(modified) is float and type(size) is type(hits) is int:
        return CachedRow(image_id, accessed, modified, size, hits)  # what Glance writes
    return CachedRow(
        image_id,
        _number(db_path, image_id, "last_accessed", accessed, float),
        _number(db_path, image_id, "last_modified", modified, float),
        _number(db_path, image_id, "size", size, int),
        _number(db_path, image_id, "hits", hits, int),
    )


def _number(
    db_path: str, image_id: str, column: str, value: Any, kind: type[int] | type[float]
) -> Any:
    """``value`` as ``kind``; NULL is Glance's default 0, a non-number raises BadRowValue."""
    if value is None:
        return kind()
    if isinstance(value, int | float) and math.isfinite(value):
        return kind(value)
    raise BadRowValue(db_path, image_id, column, value)


def _batches(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` cut into slices of ``BATCH_ROWS``: one write transaction each."""
    for start in range(0, len(items), BATCH_ROWS):
        yield items[start : start + BATCH_ROWS]


def _marks(items: Sequence[object]) -> str:
    """``?,?,...``: one placeholder per item, for an ``IN (...)`` list."""
    return ",".join("?" * len(items))


class SqliteStore:
    """``MetadataStore`` over one ``cache.db`` (Glance's sqlite driver)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def db_path(self) -> str:
        return self.db.path

    def _row(self, r: tuple[Any, ...]) -> CachedRow:
        return row_from_sqlite(r, self.db.path)

    # ---------------------------------------------------------------- checks

    def create_schema(self) -> None:
        """Create ``cached_images`` if needed (the only code that creates the
        db); existing rows and the journal mode are left as they are."""
        with self.db.connect(create=True) as conn:
            conn.execute(SCHEMA)
            self.db.check_schema(conn)

    def check_schema(self) -> None:
        with self.db.connect() as conn:
            self.db.check_schema(conn)

    def quick_check(self) -> list[str]:
        """Problems ``PRAGMA quick_check`` finds (empty when ok)."""
        return self.db.quick_check()

    def check_writable(self) -> None:
        self.db.check_writable()

    # ----------------------------------------------------------------- reads

    def list_rows(self) -> list[CachedRow]:
        return [
            self._row(r)
            for page in self._read_pages(f"{ROW_COLUMNS}, rowid", "rowid")
            for r in page
        ]

    def _read_pages(
        self, columns: str, key: str, where: str = ""
    ) -> Iterator[list[tuple[Any, ...]]]:
        """``cached_images`` in ``key`` order as raw tuples, one page per statement.

        ``key`` is unique (``rowid`` or ``image_id``) and the last of
        ``columns``; ``where`` an extra condition of the first page (later
        pages start after a key, which excludes NULL anyway). Keyset
        pagination: every page is its own short statement, run to its end
        before it is yielded, so no lock is held while the caller converts
        it (a row updated between pages shows its newer values, as if read a
        moment later).
        """
        select = f"SELECT {columns} FROM cached_images"
        first = f" WHERE {where}" if where else ""
        with self.db.connect() as conn:
            page = self.db.fetch_all(
                conn, f"{select}{first} ORDER BY {key} LIMIT ?", (READ_PAGE_ROWS,)
            )
            while True:
                yield page
                if len(page) < READ_PAGE_ROWS:
                    return
                page = self.db.fetch_all(
                    conn,
                    f"{select} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                    (page[-1][-1], READ_PAGE_ROWS),
                )

    def rows_by_id(self, image_ids: Iterable[str]) -> dict[str, CachedRow]:
        ids = list(image_ids)
        raw: list[tuple[Any, ...]] = []
        with self.db.connect() as conn:
            for chunk in _batches(ids):
                query = (
                    f"SELECT {ROW_COLUMNS} FROM cached_images WHERE image_id IN ({_marks(chunk)})"
                )
                raw += self.db.fetch_all(conn, query, chunk)
        return {str(r[0]): self._row(r) for r in raw}

    def iter_rows_lru(
        self, page_size: int = 1000, max_page_size: int = 16000
    ) -> Iterator[CachedRow]:
        """Rows in ``(last_accessed, image_id)`` order, read a page at a time.

        Every page costs a full scan of the table (it has no index on
        ``last_accessed``), so pages double in size up to ``max_page_size``:
        a caller that needs k rows pays about log2(k) scans, not k / page_size.
        """
        order = "COALESCE(last_accessed, 0.0), image_id"
        query = f"SELECT {ROW_COLUMNS} FROM cached_images"
        after: tuple[float, str] | None = None
        while True:
            with self.db.connect() as conn:
                if after is None:
                    page = self.db.fetch_all(
                        conn, f"{query} ORDER BY {order} LIMIT ?", (page_size,)
                    )
                else:
                    page = self.db.fetch_all(
                        conn,
                        f"{query} WHERE COALESCE(last_accessed, 0.0) > ?"
                        f" OR (COALESCE(last_accessed, 0.0) = ? AND image_id > ?)"
                        f" ORDER BY {order} LIMIT ?",
                        (after[0], after[0], after[1], page_size),
                    )
            for r in page:
                yield self._row(r)
            if len(page) < page_size:
                return
            last = page[-1]
            after = (last[1] or 0.0, last[0])
            page_size = max(page_size, min(page_size * 2, max_page_size))

    def iter_row_ids(self) -> Iterator[str]:
        # image_id order: the primary key's covering index, read sequentially
        for page in self._read_pages("image_id", "image_id", "image_id IS NOT NULL"):
            for (image_id,) in page:
                yield str(image_id)

    def total_hits(self) -> int:
        with self.db.connect() as conn:
            rows = self.db.fetch_all(conn, "SELECT COALESCE(SUM(hits), 0) FROM cached_images")
        return int(rows[0][0])

    def newest_access(self) -> float | None:
        with self.db.connect() as conn:
            value = conn.execute(
                "SELECT MAX(last_accessed) FROM cached_images"
                " WHERE typeof(last_accessed) IN ('real', 'integer')"  # text sorts above numbers
            ).fetchone()[0]
        return None if value is None else float(value)

    # ---------------------------------------------------------------- writes

    def record_cached(self, image_id: str, size: int, when: float) -> None:
        """Upsert (Glance's plain INSERT fails on an existing row and leaves it stale)."""
        with self.db.writing() as conn:
            conn.execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)"
                " VALUES (?, ?, ?, 0, ?)"
                " ON CONFLICT(image_id) DO UPDATE SET"
                " last_accessed = excluded.last_accessed,"
                " last_modified = excluded.last_modified, size = excluded.size",
                (image_id, when, when, size),
            )

    def record_hit(self, image_id: str, when: float) -> None:
        with self.db.writing() as conn:
            conn.execute(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                (when, image_id),
            )

    def adopt(self, rows: Sequence[CachedRow]) -> int:
        """``INSERT OR IGNORE``, a batch per transaction."""
        adopted = 0
        for chunk in _batches(rows):
            with self.db.writing() as conn:
                for row in chunk:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO cached_images"
                        " (image_id, last_accessed, last_modified, hits, size)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (row.image_id, row.last_accessed, row.last_modified, row.hits, row.size),
                    )
                    adopted += cursor.rowcount
        return adopted

    def delete_rows(
        self, image_ids: Sequence[str], keep: Callable[[str], bool] | None = None
    ) -> int:
        deleted = 0
        for batch in _batches(image_ids):
            with self.db.writing() as conn:
                chunk = [key for key in batch if keep is None or not keep(key)]
                if chunk:
                    chunk.sort()  # index order: neighbouring pages, a smaller journal
                    cursor = conn.execute(
                        f"DELETE FROM cached_images WHERE image_id IN ({_marks(chunk)})", chunk
                    )
                    deleted += cursor.rowcount
        return deleted

    def delete_invalid_rows(self, image_ids: Sequence[str]) -> int:
        keys = sorted({key for key in image_ids if not is_uuid(key)})
        deleted = 0
        for chunk in _batches(keys):
            null = " OR image_id IS NULL" if "" in chunk else ""
            with self.db.writing() as conn:
                cursor = conn.execute(
                    f"DELETE FROM cached_images WHERE image_id IN ({_marks(chunk)}){null}", chunk
                )
                deleted += cursor.rowcount
        return deleted

    def delete_all_rows(self) -> None:
        with self.db.writing() as conn:
            conn.execute("DELETE FROM cached_images")

    def touch_rows(self, image_ids: Sequence[str], when: float) -> int:
        changed = 0
        for batch in _batches(image_ids):
            chunk = sorted(batch)
            with self.db.writing() as conn:
                cursor = conn.execute(
                    "UPDATE cached_images SET last_accessed = ?"
                    f" WHERE last_accessed < ? AND image_id IN ({_marks(chunk)})",
                    (when, when, *chunk),
                )
                changed += cursor.rowcount
        return changed

    def set_sizes(self, sizes: Sequence[tuple[str, int]]) -> int:
        changed = 0
        for chunk in _batches(sizes):
            with self.db.writing() as conn:
                for key, size in chunk:
                    cursor = conn.execute(
                        "UPDATE cached_images SET size = ? WHERE image_id = ? AND size IS NOT ?",
                        (size, key, size),
                    )
                    changed += cursor.rowcount
        return changed


__all__ = ["BATCH_ROWS", "READ_PAGE_ROWS", "ROW_COLUMNS", "SqliteStore", "row_from_sqlite"]
