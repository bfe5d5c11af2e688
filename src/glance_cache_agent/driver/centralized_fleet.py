"""What only a shared database can tell: images Glance deleted, and every node's cache.

The ``centralized_db`` rows sit in Glance's main database, next to its
``images`` table. With SELECT on that table the agent can tell which cached
images can never be served again (``DeadImages``: prune evicts them first,
the exporter counts them), and from any node which nodes cache what
(``fleet_nodes``, ``nodes_caching``: the ``nodes`` command). Everything
here only reads; a user without SELECT on ``images`` turns the dead-image
figures off (one warning, ``None`` in place of a count), never fails.

An image is dead when its ``images`` row is absent, ``deleted`` is true, or
its status is ``deleted``, ``pending_delete`` or ``killed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Row,
    Select,
    String,
    Table,
    func,
    or_,
    select,
)

from ..log import get_logger
from .centralized_db import ServerDatabase
from .centralized_schema import cached_images, from_db_time, node_reference
from .errors import DatabaseError, DatabaseLocked, DatabaseUnavailable

LOG = get_logger(__name__)

_T = TypeVar("_T")

#: ``images.status`` values of an image that can never be served again
DEAD_STATUSES = ("deleted", "pending_delete", "killed")
#: image ids per ``IN`` list of a lookup
LOOKUP_BATCH = 500
#: rows per statement of a node's dead rows (keyset pages, as every whole-table read)
READ_PAGE_ROWS = 5000

#: the columns of Glance's ``images`` table the agent reads (never writes)
glance_images = Table(
    "images",
    MetaData(),
    Column("id", String(36), primary_key=True),
    Column("status", String(30), nullable=False),
    Column("deleted", Boolean, nullable=False),
)

_i = glance_images.c
_c = cached_images.c
_n = node_reference.c


def _dead_row() -> ColumnElement[bool]:
    """An outer-joined ``images`` row that says "dead" (absent, deleted, or a dead status)."""
    return or_(_i.id.is_(None), _i.deleted.is_(True), _i.status.in_(DEAD_STATUSES))


def _alive(image_ids: Sequence[str], conn: Connection) -> set[str]:
    """The ids among ``image_ids`` whose ``images`` row still serves."""
    query: Select[tuple[str]] = select(_i.id).where(
        _i.id.in_(image_ids), _i.deleted.is_not(True), _i.status.not_in(DEAD_STATUSES)
    )
    return set(conn.scalars(query))


def _all(query: Select[Any], conn: Connection) -> list[Row[Any]]:
    """Every row of one read statement."""
    return list(conn.execute(query))


class DeadImages:
    """Which cached images Glance deleted; off (``None``) without SELECT on ``images``."""

    def __init__(self, db: ServerDatabase) -> None:
        self.db = db
        #: False once reading ``images`` failed: the warning is given once
        self.readable = True

    def lookup(self, image_ids: Iterable[str]) -> set[str] | None:
        """The dead ones among ``image_ids``; None when ``images`` cannot be read."""
        keys = sorted(set(image_ids))
        if not self.readable:
            return None
        dead: set[str] = set()
        for start in range(0, len(keys), LOOKUP_BATCH):
            chunk = keys[start : start + LOOKUP_BATCH]
            alive = self.guarded(partial(_alive, chunk))
            if alive is None:
                return None
            dead.update(key for key in chunk if key not in alive)
        return dead

    def rows_of_node(
        self, node_id: int, columns: Sequence[ColumnElement[Any]]
    ) -> list[Row[Any]] | None:
        """``columns`` (and ``id``) of the node's ``cached_images`` rows whose
        image Glance deleted, in keyset pages; None when ``images`` is unreadable."""
        found: list[Row[Any]] = []
        after: int | None = None
        joined = cached_images.outerjoin(glance_images, _i.id == _c.image_id)
        while True:
            query = (
                select(*columns, _c.id)
                .select_from(joined)
                .where(_c.node_reference_id == node_id, _dead_row())
                .order_by(_c.id)
                .limit(READ_PAGE_ROWS)
            )
            if after is not None:
                query = query.where(_c.id > after)
            page = self.guarded(partial(_all, query))
            if page is None:
                return None
            found.extend(page)
            if len(page) < READ_PAGE_ROWS:
                return found
            after = page[-1].id

    def guarded(self, work: Callable[[Connection], _T]) -> _T | None:
        """``db.read(work)``, or None (with one warning) when ``images`` is not readable.

        A server that is down or a lock conflict still raise: that is the
        database failing, not a missing privilege.
        """
        if not self.readable:
            return None
        try:
            return self.db.read(work)
        except (DatabaseUnavailable, DatabaseLocked):
            raise
        except DatabaseError as exc:
            self.readable = False
            LOG.warning(
                "cannot read Glance's images table: images deleted in Glance are not"
                " evicted first nor counted (grant SELECT on images to turn this on)",
                database=self.db.label,
                error=str(exc),
            )
            return None


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """One ``node_reference`` row and its cache, as the ``nodes`` command shows it."""

    node_reference_id: int
    node_url: str
    cached_images: int
    cached_bytes: int
    #: latest ``last_accessed`` of its rows; None: no rows
    last_accessed: float | None
    #: images Glance deleted and their bytes; None when ``images`` is unreadable
    dead_images: int | None
    dead_bytes: int | None


@dataclass(frozen=True, slots=True)
class NodeCaching:
    """One node's row of one image (Glance's ``GET /v2/cache/nodes/{image_id}``, detailed)."""

    node_reference_id: int
    node_url: str
    size: int
    hits: int
    last_accessed: float
    last_modified: float


def _on_node() -> ColumnElement[bool]:
    """The join of a cache row to its node."""
    return _c.node_reference_id == _n.node_reference_id


def _totals(conn: Connection) -> list[Any]:
    joined = node_reference.outerjoin(cached_images, _on_node())
    query = (
        select(
            _n.node_reference_id,
            _n.node_reference_url,
            func.count(_c.id).label("images"),
            func.coalesce(func.sum(_c.size), 0).label("bytes"),
            func.max(_c.last_accessed).label("newest"),
        )
        .select_from(joined)
        .group_by(_n.node_reference_id, _n.node_reference_url)
        .order_by(_n.node_reference_url)
    )
    return list(conn.execute(query))


def _dead_totals(conn: Connection) -> dict[int, tuple[int, int]]:
    joined = cached_images.outerjoin(glance_images, _i.id == _c.image_id)
    query = (
        select(_c.node_reference_id, func.count(_c.id), func.coalesce(func.sum(_c.size), 0))
        .select_from(joined)
        .where(_dead_row())
        .group_by(_c.node_reference_id)
    )
    return {int(node): (int(n), int(size)) for node, n, size in conn.execute(query)}


def fleet_nodes(db: ServerDatabase, dead: DeadImages) -> list[NodeSummary]:
    """Every registered node with its cached images, bytes, newest access and dead weight."""
    totals = db.read(_totals)
    dead_totals: dict[int, tuple[int, int]] | None = dead.guarded(_dead_totals)
    summaries = []
    for row in totals:
        node = int(row.node_reference_id)
        dead_n, dead_b = (None, None) if dead_totals is None else dead_totals.get(node, (0, 0))
        summaries.append(
            NodeSummary(
                node_reference_id=node,
                node_url=str(row.node_reference_url),
                cached_images=int(row.images),
                cached_bytes=int(row.bytes),
                last_accessed=None if row.newest is None else from_db_time(row.newest),
                dead_images=dead_n,
                dead_bytes=dead_b,
            )
        )
    return summaries


def nodes_caching(db: ServerDatabase, image_id: str) -> list[NodeCaching]:
    """The nodes whose cache holds a row of ``image_id``, ordered by URL."""
    query = (
        select(_n.node_reference_id, _n.node_reference_url, _c.size, _c.hits)
        .add_columns(_c.last_accessed, _c.last_modified)
        .select_from(cached_images.join(node_reference, _on_node()))
        .where(_c.image_id == image_id)
        .order_by(_n.node_reference_url)
    )
    return [
        NodeCaching(
            node_reference_id=int(r.node_reference_id),
            node_url=str(r.node_reference_url),
            size=int(r.size or 0),
            hits=int(r.hits or 0),
            last_accessed=from_db_time(r.last_accessed),
            last_modified=from_db_time(r.last_modified),
        )
        for r in db.read(lambda conn: list(conn.execute(query)))
    ]


__all__ = [
    "DEAD_STATUSES",
    "DeadImages",
    "NodeCaching",
    "NodeSummary",
    "fleet_nodes",
    "glance_images",
    "nodes_caching",
]
