"""The centralized_db cache driver: Glance's driver API over this node's rows.

Follows ``glance.image_cache.drivers.centralized_db.Driver``: the files of
the cache plus rows in Glance's main database, scoped to the node whose
``node_reference_url`` is this node's ``worker_self_reference_url``.
``open_centralized_driver`` connects, checks the schema and finds the node
before anything else runs, so a wrong URL, a missing table or a missing
DB-API driver fails at once with one clear error. It never creates or
deletes ``node_reference`` rows, never alters the schema and never touches
``cache.db``.
"""

from __future__ import annotations

import importlib.util

from sqlalchemy import URL, Connection, Engine, create_engine, make_url, select
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .base import CacheDriver
from .centralized_db import DEFAULT_LOCK_TIMEOUT, ServerDatabase, configure_sessions, safe_url
from .centralized_schema import check_schema, node_reference
from .centralized_store import CentralizedStore
from .db import TxnObserver
from .errors import NodeNotRegistered, UnsupportedDatabase
from .settings import CacheSettings

#: backend name -> the extra that installs its DB-API driver (None: stdlib)
SUPPORTED_BACKENDS: dict[str, str | None] = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": None,
}

#: node URLs named in the error when this node's is not registered
_SHOWN_NODES = 5


class CentralizedDriver(CacheDriver):
    """Cache driver for Glance's ``centralized_db`` (files here, rows in Glance's db)."""

    driver_name = "centralized_db"
    store: CentralizedStore

    def __init__(self, settings: CacheSettings, store: CentralizedStore, node_url: str) -> None:
        super().__init__(settings, store)
        self.node_url = node_url

    def close(self) -> None:
        """Close the pooled database connections (a new one opens on next use)."""
        self.store.db.engine.dispose()


def open_centralized_driver(
    settings: CacheSettings,
    database_url: str,
    node_url: str,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    observer: TxnObserver | None = None,
) -> CacheDriver:
    """Connect to Glance's database and return a driver on this node's rows.

    Raises ``UnsupportedDatabase`` (bad URL, unsupported server, DB-API
    driver missing), ``DatabaseUnavailable`` (cannot connect or log in),
    ``SchemaMismatch`` (tables or columns missing) or ``NodeNotRegistered``.
    ``observer`` receives each write transaction's duration (benchmarks).
    """
    db = open_database(database_url, lock_timeout, observer)
    try:
        node_id = db.read(lambda conn: _node_id(conn, node_url, db.label))
    except BaseException:
        db.engine.dispose()
        raise
    return CentralizedDriver(settings, CentralizedStore(db, node_id), node_url)


def open_database(
    database_url: str,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    observer: TxnObserver | None = None,
) -> ServerDatabase:
    """Connect to Glance's database and check its cache schema; no node is
    needed (fleet-wide reads: the ``nodes`` command). Raises as
    ``open_centralized_driver`` does, ``NodeNotRegistered`` aside."""
    engine = _engine(_parse(database_url), lock_timeout)
    db = ServerDatabase(engine, observer=observer)
    try:
        db.read(lambda conn: check_schema(conn, db.label))
    except BaseException:
        engine.dispose()
        raise
    return db


def _parse(database_url: str) -> URL:
    """The URL, with a DB-API driver we ship for MySQL when it names none."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        # the text may hold a password: it is not repeated
        raise UnsupportedDatabase(
            "the database URL cannot be parsed: expected an SQLAlchemy URL such as"
            " postgresql://USER:PASSWORD@HOST/glance or mysql+pymysql://USER:PASSWORD@HOST/glance"
        ) from None
    backend = url.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise UnsupportedDatabase(
            f"database {safe_url(url)}: {backend!r} is not"
            " supported; use PostgreSQL (postgresql://) or MySQL/MariaDB (mysql+pymysql://)"
        )
    if (
        backend in ("mysql", "mariadb")
        and url.get_driver_name() == "mysqldb"
        and importlib.util.find_spec("MySQLdb") is None
        and importlib.util.find_spec("pymysql") is not None
    ):
        url = url.set(drivername=f"{backend}+pymysql")  # Glance's own choice, in our extra
    return url


def _engine(url: URL, lock_timeout: float) -> Engine:
    """An engine whose sessions wait ``lock_timeout`` at most; stale pooled
    connections are replaced before use (``pool_pre_ping``)."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (ImportError, NoSuchModuleError) as exc:
        backend = url.get_backend_name()
        raise UnsupportedDatabase(
            f"database {safe_url(url)}: the DB-API driver"
            f" {url.get_driver_name()!r} is not installed ({exc}); install it with"
            f" pip install 'glance-cache-agent[{SUPPORTED_BACKENDS[backend]}]'"
        ) from None
    configure_sessions(engine, lock_timeout)
    return engine


def _node_id(conn: Connection, node_url: str, where: str) -> int:
    """``node_reference_id`` of exactly ``node_url``; NodeNotRegistered if none."""
    column = node_reference.c.node_reference_url
    found = conn.execute(
        select(node_reference.c.node_reference_id).where(column == node_url)
    ).scalar_one_or_none()
    if found is not None:
        return int(found)
    if not node_url:
        raise NodeNotRegistered(
            where,
            node_url,
            "no node URL is set: set cache.node_url (Glance's worker_self_reference_url)",
        )
    known = list(conn.scalars(select(column).order_by(column).limit(_SHOWN_NODES + 1)))
    shown = ", ".join(repr(u) for u in known[:_SHOWN_NODES]) + (
        ", ..." if len(known) > _SHOWN_NODES else ""
    )
    raise NodeNotRegistered(
        where,
        node_url,
        f"no node_reference row has node_reference_url {node_url!r} (glance-api registers"
        f" its worker_self_reference_url when it starts; the URL must match exactly);"
        f" registered: {shown or 'none'}",
    )


__all__ = ["SUPPORTED_BACKENDS", "CentralizedDriver", "open_centralized_driver", "open_database"]
