"""Glance's centralized cache tables as the agent sees them, and their timestamps.

Glance's alembic revision ``2024_1_expand01`` creates ``node_reference`` and
``cached_images`` in its main database; the agent only reads that schema
(never creates, alters or indexes it), so the tables here are expressions to
build statements with, not DDL. ``check_schema`` verifies at start that the
server has what the statements need and names what lacks.

Timestamps are naive UTC ``DATETIME`` values in the database and float epoch
seconds at the ``MetadataStore`` interface. The conversion is explicit about
UTC both ways, so it is right whatever the process's ``TZ`` (Glance's own
``datetime.timestamp()`` on a naive value reads it as local time).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
)

from .errors import GlanceSchemaMismatch

_metadata = MetaData()

node_reference = Table(
    "node_reference",
    _metadata,
    Column("node_reference_id", BigInteger, primary_key=True),
    Column("node_reference_url", String(255), nullable=False),
)

cached_images = Table(
    "cached_images",
    _metadata,
    Column("id", BigInteger, primary_key=True),
    Column("image_id", String(36), nullable=False),
    Column("last_accessed", DateTime, nullable=False),
    Column("last_modified", DateTime, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("hits", Integer, nullable=False),
    Column("checksum", String(32)),
    Column("node_reference_id", BigInteger, nullable=False),
)

#: the columns every statement of the store relies on, per table
EXPECTED_COLUMNS: dict[str, tuple[str, ...]] = {
    table.name: tuple(column.name for column in table.columns)
    for table in (node_reference, cached_images)
}


def check_schema(conn: Connection, where: str) -> None:
    """Raise GlanceSchemaMismatch unless both tables exist with Glance's columns.

    One error names every missing table and column, so an operator fixes
    the database (``glance-manage db sync``) in one go. ``where`` is the
    database URL (password hidden) the error is about.
    """
    inspector = inspect(conn)
    problems = []
    for table, expected in EXPECTED_COLUMNS.items():
        if not inspector.has_table(table):
            problems.append(f"table {table!r} does not exist")
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        missing = [name for name in expected if name not in present]
        if missing:
            problems.append(f"table {table!r} lacks column(s) {', '.join(missing)}")
    if problems:
        raise GlanceSchemaMismatch(
            where,
            "not Glance's centralized image cache schema (run glance-manage db sync): "
            + "; ".join(problems),
        )


def to_db_time(epoch: float) -> datetime:
    """Epoch seconds as the naive UTC datetime Glance stores."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def from_db_time(value: datetime | None) -> float:
    """A stored naive UTC datetime as epoch seconds (NULL reads as 0.0, as in Glance's sqlite)."""
    if value is None:
        return 0.0
    return value.replace(tzinfo=UTC).timestamp()


__all__ = [
    "EXPECTED_COLUMNS",
    "cached_images",
    "check_schema",
    "from_db_time",
    "node_reference",
    "to_db_time",
]
