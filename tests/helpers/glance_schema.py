"""Glance's centralized_db cache tables, built the way Glance's migration builds them.

Fast unit tests of the centralized store run on SQLite, where Glance's own
``glance-manage db sync`` cannot be run per test cheaply. This module replicates
what alembic revision ``2024_1_expand01`` (Glance 28.0.0 .. 33.0.0) creates:
the same table and column names, types (``BigInteger`` becomes ``Integer`` on
SQLite, as Glance's ``with_variant`` makes it, so the key autoincrements),
nullability, no server defaults, the same primary keys, foreign key and
named unique constraints. ``tests/integration/test_db_servers.py`` compares
this replica with the schema a real ``db sync`` produced, so drift shows there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)

#: Glance's alembic head for 33.0.0 (the centralized tables appear at 2024_1_expand01).
GLANCE_ALEMBIC_HEAD = "2024_1_contract01"

#: Constraint names exactly as Glance's migration spells them.
NODE_URL_UNIQUE = "uq_node_reference_node_reference_url"
IMAGE_NODE_UNIQUE = "ix_cached_images_image_id_node_reference_id"

_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def _id_type() -> BigInteger:
    """BIGINT everywhere but SQLite, where only INTEGER PRIMARY KEY autoincrements."""
    return BigInteger().with_variant(Integer(), "sqlite")


def glance_cache_metadata() -> MetaData:
    """A fresh MetaData holding ``node_reference`` and ``cached_images`` as Glance has them."""
    metadata = MetaData()
    Table(
        "node_reference",
        metadata,
        Column("node_reference_id", _id_type(), nullable=False, autoincrement=True),
        Column("node_reference_url", String(length=255), nullable=False),
        PrimaryKeyConstraint("node_reference_id"),
        UniqueConstraint("node_reference_url", name=NODE_URL_UNIQUE),
        **_TABLE_OPTIONS,
    )
    Table(
        "cached_images",
        metadata,
        Column("id", _id_type(), nullable=False, autoincrement=True),
        Column("image_id", String(length=36), nullable=False),
        Column("last_accessed", DateTime(timezone=False), nullable=False),
        Column("last_modified", DateTime(timezone=False), nullable=False),
        Column("size", BigInteger(), nullable=False),
        Column("hits", Integer(), nullable=False),
        Column("checksum", String(length=32), nullable=True),
        Column("node_reference_id", _id_type(), nullable=False),
        PrimaryKeyConstraint("id"),
        ForeignKeyConstraint(["node_reference_id"], ["node_reference.node_reference_id"]),
        UniqueConstraint("image_id", "node_reference_id", name=IMAGE_NODE_UNIQUE),
        **_TABLE_OPTIONS,
    )
    return metadata


def create_glance_schema(engine: Engine) -> None:
    """Create ``node_reference`` and ``cached_images`` in ``engine``'s database.

    Meant for SQLite unit tests; on a real server prefer the ``glance_db``
    fixture, whose schema comes from Glance's own ``db sync``.
    """
    glance_cache_metadata().create_all(engine)
