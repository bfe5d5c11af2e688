"""The ``centralized_db`` metadata store: this node's rows of Glance's ``cached_images``.

Since 2024.1 Glance keeps its cache rows in its main database, one set per
node (``node_reference_id``). ``CentralizedStore`` offers ``MetadataStore``
over the rows of one node and never reads or writes another node's rows:
every statement carries ``node_reference_id = :node``. Statements are
SQLAlchemy Core, so one text serves PostgreSQL, MySQL/MariaDB and SQLite
(tests); sessions, retries and error types come from ``ServerDatabase``.

What Glance does and we do differently (see docs/compatibility.md): a
re-cache over an existing row repairs it (Glance's duplicate INSERT fails
and leaves the stale row), adoption inserts inside a savepoint and lets an
existing row win (never ``ON DUPLICATE KEY UPDATE``, which rewrites the
key), timestamps convert as UTC whatever the ``TZ``, and LRU ties break by
image id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Row, and_, func, insert, or_, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError

from .centralized_db import ServerDatabase
from .centralized_fleet import DeadImages
from .centralized_schema import cached_images, check_schema, from_db_time, to_db_time
from .crashpoints import crash_point
from .errors import InvalidImageId
from .ids import is_uuid
from .store import CachedRow

#: Rows changed per write transaction by set-based statements (``IN`` lists).
BATCH_ROWS = 500
#: Rows per write transaction where each row is its own statement (sizes,
#: adoption after a race): a round trip each, so fewer rows keep it short.
ROW_STATEMENT_BATCH = 100
#: Rows per statement of a whole-table read (keyset pages: no long statement).
READ_PAGE_ROWS = 5000

_T = TypeVar("_T")

_c = cached_images.c
_ROW_COLUMNS = (_c.image_id, _c.last_accessed, _c.last_modified, _c.size, _c.hits)


def _batches(items: Sequence[_T], size: int = BATCH_ROWS) -> Iterator[Sequence[_T]]:
    """``items`` cut into slices of ``size``: one write transaction each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(r: Row[Any]) -> CachedRow:
    """A ``_ROW_COLUMNS`` result row as the interface's ``CachedRow``."""
    return CachedRow(
        "" if r.image_id is None else str(r.image_id),
        from_db_time(r.last_accessed),
        from_db_time(r.last_modified),
        int(r.size or 0),
        int(r.hits or 0),
    )


class CentralizedStore:
    """``MetadataStore`` over the ``cached_images`` rows of one node."""

    def __init__(self, db: ServerDatabase, node_id: int) -> None:
        self.db = db
        self.node_id = node_id
        self.dead = DeadImages(db)

    @property
    def db_path(self) -> str:
        """Where the rows are: the database URL, password hidden."""
        return self.db.label

    def _mine(self, *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
        """This node's rows (and ``conditions``): the WHERE of every statement."""
        return and_(_c.node_reference_id == self.node_id, *conditions)

    # ---------------------------------------------------------------- checks

    def check_schema(self) -> None:
        self.db.read(lambda conn: check_schema(conn, self.db.label))

    def check_writable(self) -> None:
        """Insert, update and delete a probe row of this node, then roll back.

        A statement matching no row proves nothing on every server (MySQL
        checks privileges per table, a read-only SQLite file fails only when
        a page is dirtied), so the probe really writes each way prune and
        reconcile do; the rollback leaves no trace but a consumed id.
        """
        probe = CachedRow(str(uuid.uuid4()), 0.0, 0.0, 0, 0)
        this_probe = self._mine(_c.image_id == probe.image_id)

        def work(conn: Connection) -> None:
            conn.execute(insert(cached_images).values(self._values(probe)))
            conn.execute(update(cached_images).where(this_probe).values(hits=1))
            conn.execute(sql_delete(cached_images).where(this_probe))

        self.db.write(work, commit=False)

    # ----------------------------------------------------------------- reads

    def list_rows(self) -> list[CachedRow]:
        rows: list[CachedRow] = []
        after: int | None = None
        while True:
            query = select(*_ROW_COLUMNS, _c.id).where(self._mine()).order_by(_c.id)
            if after is not None:
                query = query.where(_c.id > after)
            page = self._fetch(query.limit(READ_PAGE_ROWS))
            rows.extend(_row(r) for r in page)
            if len(page) < READ_PAGE_ROWS:
                return rows
            after = page[-1].id

    def _fetch(self, query: Any) -> list[Row[Any]]:
        """One read statement, run to its end in its own short transaction."""
        return self.db.read(lambda conn: list(conn.execute(query)))

    def rows_by_id(self, image_ids: Iterable[str]) -> dict[str, CachedRow]:
        keys = sorted(set(image_ids))
        found: dict[str, CachedRow] = {}
        for chunk in _batches(keys):
            query = select(*_ROW_COLUMNS).where(self._mine(_c.image_id.in_(chunk)))
            found.update((r.image_id, _row(r)) for r in self._fetch(query))
        return found

    def iter_rows_lru(
        self, page_size: int = 1000, max_page_size: int = 16000
    ) -> Iterator[CachedRow]:
        """Keyset pages on the stored ``(last_accessed, image_id)``: the next page
        starts after the last stored DATETIME itself, never a float made of it."""
        after: tuple[datetime, str] | None = None
        order = (_c.last_accessed, _c.image_id)
        while True:
            query = select(*_ROW_COLUMNS).where(self._mine()).order_by(*order)
            if after is not None:
                query = query.where(
                    or_(
                        _c.last_accessed > after[0],
                        and_(_c.last_accessed == after[0], _c.image_id > after[1]),
                    )
                )
            page = self._fetch(query.limit(page_size))
            yield from (_row(r) for r in page)
            if len(page) < page_size:
                return
            after = (page[-1].last_accessed, page[-1].image_id)
            page_size = max(page_size, min(page_size * 2, max_page_size))

    def iter_row_ids(self) -> Iterator[str]:
        after: str | None = None
        while True:
            query = select(_c.image_id).where(self._mine()).order_by(_c.image_id)
            if after is not None:
                query = query.where(_c.image_id > after)
            page = [r.image_id for r in self._fetch(query.limit(READ_PAGE_ROWS))]
            yield from (str(image_id) for image_id in page)
            if len(page) < READ_PAGE_ROWS:
                return
            after = page[-1]

    def total_hits(self) -> int:
        query = select(func.coalesce(func.sum(_c.hits), 0)).where(self._mine())
        return int(self.db.read(lambda conn: conn.execute(query).scalar_one()))

    def newest_access(self) -> float | None:
        query = select(func.max(_c.last_accessed)).where(self._mine())
        value = self.db.read(lambda conn: conn.execute(query).scalar_one())
        return None if value is None else from_db_time(value)

    def dead_rows(self) -> list[CachedRow] | None:
        """This node's rows of images Glance deleted, in eviction order
        (``DeadImageLookup``); None without SELECT on Glance's ``images``
        table (warned once)."""
        found = self.dead.rows_of_node(self.node_id, _ROW_COLUMNS)
        if found is None:
            return None
        return sorted((_row(r) for r in found), key=lambda r: (r.last_accessed, r.image_id))

    # ---------------------------------------------------------------- writes

    def record_cached(self, image_id: str, size: int, when: float) -> None:
        """Upsert: refresh an existing row's timestamps and size (hits kept),
        else insert one as Glance does (hits 0, no checksum).

        Glance's commit INSERTs and, on an existing row, fails and keeps the
        stale row (wrong size, old ``last_accessed``); this repairs it. The
        insert runs in a savepoint: a row Glance inserts between our UPDATE
        and INSERT makes it fail, and the UPDATE then runs again.
        """
        if not is_uuid(image_id):
            raise InvalidImageId(image_id, "the centralized_db store keeps only UUIDs")
        stamp = to_db_time(when)
        refresh = (
            update(cached_images)
            .where(self._mine(_c.image_id == image_id))
            .values(last_accessed=stamp, last_modified=stamp, size=size)
        )

        def work(conn: Connection) -> None:
            if conn.execute(refresh).rowcount:
                return
            new = CachedRow(image_id, when, when, size, 0)
            if not self._insert_in_savepoint(conn, new):
                conn.execute(refresh)

        self.db.write(work)

    def _insert_in_savepoint(self, conn: Connection, row: CachedRow) -> bool:
        """Insert ``row`` inside a SAVEPOINT; False when a row with its key exists."""
        try:
            with conn.begin_nested():
                conn.execute(insert(cached_images).values(self._values(row)))
        except IntegrityError:
            return False
        return True

    def _values(self, row: CachedRow) -> dict[str, Any]:
        """A row's column values as Glance writes them (checksum NULL)."""
        return {
            "image_id": row.image_id,
            "last_accessed": to_db_time(row.last_accessed),
            "last_modified": to_db_time(row.last_modified),
            "size": row.size,
            "hits": row.hits,
            "checksum": None,
            "node_reference_id": self.node_id,
        }

    def record_hit(self, image_id: str, when: float) -> None:
        statement = (
            update(cached_images)
            .where(self._mine(_c.image_id == image_id))
            .values(hits=_c.hits + 1, last_accessed=to_db_time(when))
        )
        self.db.write(lambda conn: conn.execute(statement))

    def adopt(self, rows: Sequence[CachedRow]) -> int:
        """Insert rows that do not exist yet; an existing row wins and keeps its key.

        Per batch: read which ids exist, insert the others in one statement
        inside a savepoint; if Glance inserted one of them meanwhile, fall
        back to a savepoint per row. Rows whose id is not a UUID (the column
        is Glance's VARCHAR(36)) are never inserted.
        """
        wanted = [row for row in rows if is_uuid(row.image_id)]
        return self._write_batches(wanted, self._adopt_batch, ROW_STATEMENT_BATCH)

    def _write_batches(
        self,
        items: Sequence[_T],
        work: Callable[[Sequence[_T], Connection], int],
        size: int = BATCH_ROWS,
    ) -> int:
        """``work(chunk, conn)`` for each chunk of ``items``, one write
        transaction each; return the sum of what the chunks return.

        Test-only crash points (off unless armed) frame each transaction:
        ``db:commit`` after its statements, before COMMIT; ``db:committed``
        just after it.
        """

        def statements_then_commit_point(chunk: Sequence[_T], conn: Connection) -> int:
            done = work(chunk, conn)
            crash_point("db:commit")
            return done

        total = 0
        for chunk in _batches(items, size):
            total += self.db.write(partial(statements_then_commit_point, chunk))
            crash_point("db:committed")
        return total

    def _adopt_batch(self, batch: Sequence[CachedRow], conn: Connection) -> int:
        ids = [row.image_id for row in batch]
        existing = set(conn.scalars(select(_c.image_id).where(self._mine(_c.image_id.in_(ids)))))
        fresh = list({row.image_id: row for row in batch if row.image_id not in existing}.values())
        if not fresh:
            return 0
        try:
            with conn.begin_nested():
                conn.execute(insert(cached_images), [self._values(row) for row in fresh])
            return len(fresh)
        except IntegrityError:
            return sum(self._insert_in_savepoint(conn, row) for row in fresh)

    def delete_rows(
        self, image_ids: Sequence[str], keep: Callable[[str], bool] | None = None
    ) -> int:
        def work(batch: Sequence[str], conn: Connection) -> int:
            # asked inside the transaction, just before the delete
            chunk = sorted(key for key in batch if keep is None or not keep(key))
            return self._delete_ids(conn, chunk) if chunk else 0

        return self._write_batches(image_ids, work)

    def _delete_ids(self, conn: Connection, image_ids: Sequence[str]) -> int:
        statement = sql_delete(cached_images).where(self._mine(_c.image_id.in_(image_ids)))
        return int(conn.execute(statement).rowcount)

    def delete_invalid_rows(self, image_ids: Sequence[str]) -> int:
        """Only non-UUID ids; ``""`` also stands for a NULL id (which Glance's
        NOT NULL column cannot hold, but a hand-made table might)."""
        keys = sorted({key for key in image_ids if not is_uuid(key)})

        def work(chunk: Sequence[str], conn: Connection) -> int:
            matches: ColumnElement[bool] = _c.image_id.in_(chunk)
            if "" in chunk:
                matches = or_(matches, _c.image_id.is_(None))
            return int(conn.execute(sql_delete(cached_images).where(self._mine(matches))).rowcount)

        return self._write_batches(keys, work)

    def delete_all_rows(self) -> None:
        """Delete this node's rows, a batch of primary keys per transaction
        (one DELETE of every row would hold all their locks at once)."""
        keys = self.db.read(
            lambda conn: list(conn.scalars(select(_c.id).where(self._mine()).order_by(_c.id)))
        )

        def work(chunk: Sequence[int], conn: Connection) -> int:
            statement = sql_delete(cached_images).where(self._mine(_c.id.in_(chunk)))
            return int(conn.execute(statement).rowcount)

        self._write_batches(keys, work)

    def touch_rows(self, image_ids: Sequence[str], when: float) -> int:
        stamp = to_db_time(when)

        def work(chunk: Sequence[str], conn: Connection) -> int:
            statement = (
                update(cached_images)
                .where(self._mine(_c.image_id.in_(sorted(chunk)), _c.last_accessed < stamp))
                .values(last_accessed=stamp)
            )
            return int(conn.execute(statement).rowcount)

        return self._write_batches(image_ids, work)

    def set_sizes(self, sizes: Sequence[tuple[str, int]]) -> int:
        def work(chunk: Sequence[tuple[str, int]], conn: Connection) -> int:
            return sum(
                int(
                    conn.execute(
                        update(cached_images)
                        .where(self._mine(_c.image_id == key, _c.size != size))
                        .values(size=size)
                    ).rowcount
                )
                for key, size in chunk
            )

        return self._write_batches(sizes, work, ROW_STATEMENT_BATCH)


__all__ = ["BATCH_ROWS", "READ_PAGE_ROWS", "ROW_STATEMENT_BATCH", "CentralizedStore"]
