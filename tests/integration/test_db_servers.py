"""The real database servers behind the centralized_db tests, and Glance's schema on them.

These check the fixtures other tests stand on: both servers come up, the
schema is the one Glance's own ``db sync`` builds (at Glance 33.0.0's alembic
head), every test gets its own database, servers leave no process behind, and
the SQLite replica of the schema (``tests/helpers/glance_schema.py``) matches
what ``db sync`` built.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlalchemy.exc import IntegrityError

from tests.helpers import dbservers
from tests.helpers.dbservers import (
    TEMPLATE_DB,
    DbServer,
    MariaDbServer,
    PostgresServer,
    register_node,
)
from tests.helpers.glance_schema import GLANCE_ALEMBIC_HEAD, create_glance_schema

CACHE_TABLES = ("node_reference", "cached_images")
NODE_URL = "https://node-a.example:9292"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], Engine]]:
    """Engines on URLs, disposed after the test (so databases can be dropped)."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def _server(request: pytest.FixtureRequest, kind: str) -> DbServer:
    server: DbServer = request.getfixturevalue(dbservers.SERVER_FIXTURES[kind])
    return server


def _backend(url: str) -> str:
    return url.split("+", 1)[0]


def describe(engine: Engine, table: str, exact_types: bool) -> dict[str, Any]:
    """What a schema comparison looks at: columns in order, keys and constraints.

    ``exact_types`` compares the dialect's types and defaults (same server);
    otherwise the Python type and length (across dialects: SQLite's INTEGER
    key is Glance's own ``with_variant`` of BIGINT).
    """
    inspector = inspect(engine)

    def type_key(column: ReflectedColumn) -> object:
        kind = column["type"]
        if exact_types:
            return (repr(kind), column["default"])
        return (kind.python_type.__name__, getattr(kind, "length", None))

    return {
        "columns": [
            (column["name"], type_key(column), column["nullable"])
            for column in inspector.get_columns(table)
        ],
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        "unique": sorted(
            (unique["name"], tuple(unique["column_names"]))
            for unique in inspector.get_unique_constraints(table)
        ),
        "foreign_keys": sorted(
            (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
            for fk in inspector.get_foreign_keys(table)
        ),
    }


# -- the servers and Glance's db-synced schema ------------------------------------------------


def test_glance_db_has_glance_schema_at_alembic_head(
    glance_db: str, engine_for: Callable[[str], Engine]
) -> None:
    """The per-test database holds what Glance 33.0.0's ``db sync`` made, at its head."""
    engine = engine_for(glance_db)
    tables = set(inspect(engine).get_table_names())
    assert {*CACHE_TABLES, "images", "alembic_version"} <= tables
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        rows = conn.execute(text("SELECT count(*) FROM node_reference")).scalar_one()
    assert versions == [GLANCE_ALEMBIC_HEAD]
    assert rows == 0


def test_glance_db_keeps_foreign_key_and_unique_constraints(
    glance_db: str, engine_for: Callable[[str], Engine]
) -> None:
    """The clone enforces Glance's constraints (MariaDB's ``CREATE TABLE LIKE`` would lose FKs)."""
    node_id = register_node(glance_db, NODE_URL)
    engine = engine_for(glance_db)
    insert = text(
        "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits,"
        " node_reference_id) VALUES (:image, '2026-01-01 00:00:00', '2026-01-01 00:00:00',"
        " 1, 0, :node)"
    )
    image = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(insert, {"image": image, "node": node_id})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"image": image, "node": node_id})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"image": str(uuid.uuid4()), "node": node_id + 1000})
    with pytest.raises(IntegrityError):
        register_node(glance_db, NODE_URL)


def test_glance_db_is_isolated_from_template_and_other_tests(
    glance_db: str, request: pytest.FixtureRequest, engine_for: Callable[[str], Engine]
) -> None:
    """Rows a test writes land in its own database only; the next clone starts empty."""
    assert register_node(glance_db, NODE_URL) >= 1
    server = _server(request, _backend(glance_db))
    other = f"t_{uuid.uuid4().hex[:16]}"
    other_url = server.clone_template(other)
    try:
        for url in (server.url(TEMPLATE_DB), other_url):
            engine = engine_for(url)
            with engine.connect() as conn:
                count = conn.execute(text("SELECT count(*) FROM node_reference")).scalar_one()
            engine.dispose()  # nobody may stay connected to a PostgreSQL template
            assert count == 0, url
    finally:
        server.drop_database(other)


def test_drop_database_ends_sessions_a_test_left_open(
    glance_db: str, request: pytest.FixtureRequest
) -> None:
    """A test that leaks an open transaction does not block the clean-up of its database."""
    server = _server(request, _backend(glance_db))
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = server.clone_template(name)
    engine = create_engine(url)
    conn = engine.connect()
    conn.execute(text("SELECT count(*) FROM cached_images"))  # a transaction stays open
    try:
        server.drop_database(name)
        assert name not in _database_names(server)
    finally:
        conn.invalidate()
        engine.dispose()


def _database_names(server: DbServer) -> set[str]:
    query = (
        "SELECT datname FROM pg_database"
        if server.kind == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata"
    )
    with server.admin().connect() as conn:
        return set(conn.execute(text(query)).scalars())


# -- the SQLite replica of the schema ------------------------------------------------------


@pytest.mark.parametrize("table", CACHE_TABLES)
def test_replica_builds_the_db_synced_schema_exactly_on_the_same_server(
    glance_db: str, table: str, request: pytest.FixtureRequest, engine_for: Callable[[str], Engine]
) -> None:
    """create_glance_schema on the real server yields what ``db sync`` did: types included."""
    server = _server(request, _backend(glance_db))
    name = f"t_{uuid.uuid4().hex[:16]}"
    with server.admin().connect() as conn:
        server._create_database(conn, name)
    try:
        replica = engine_for(server.url(name))
        create_glance_schema(replica)
        expected = describe(engine_for(glance_db), table, exact_types=True)
        assert describe(replica, table, exact_types=True) == expected
    finally:
        server.drop_database(name)


@pytest.mark.parametrize("table", CACHE_TABLES)
def test_sqlite_replica_matches_the_db_synced_schema(
    glance_db: str, glance_db_sqlite: str, table: str, engine_for: Callable[[str], Engine]
) -> None:
    """The SQLite replica has db sync's columns, nullability, keys and named constraints."""
    expected = describe(engine_for(glance_db), table, exact_types=False)
    assert describe(engine_for(glance_db_sqlite), table, exact_types=False) == expected


def test_sqlite_replica_enforces_unique_node_url_and_numbers_nodes(glance_db_sqlite: str) -> None:
    """register_node works on the replica as on the servers (autoincrementing ids)."""
    first = register_node(glance_db_sqlite, NODE_URL)
    second = register_node(glance_db_sqlite, "https://node-b.example:9292")
    assert second == first + 1
    with pytest.raises(IntegrityError):
        register_node(glance_db_sqlite, NODE_URL)


# -- life cycle: no process left behind, skip or fail without binaries ---------------------


STARTERS: dict[str, Callable[[], DbServer]] = {
    "postgresql": dbservers.new_postgres_server,
    "mysql": dbservers.new_mariadb_server,
}


@pytest.mark.parametrize("kind", sorted(STARTERS))
def test_stopped_server_leaves_no_process_or_directory(kind: str) -> None:
    server = STARTERS[kind]()
    pid, root = server.pid, server.root
    assert pid is not None and dbservers.pid_alive(pid)
    server.stop()
    assert not dbservers.pid_alive(pid)
    assert not root.exists()


SESSION_THAT_DIES = """
import sys
from tests.helpers import dbservers
server = getattr(dbservers, sys.argv[1])()
print(server.pid, server.root, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("kind", sorted(STARTERS))
def test_server_dies_with_a_killed_test_session(kind: str) -> None:
    """A session SIGKILLed before its teardown (no finalizer runs) takes its server along."""
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION_THAT_DIES, STARTERS[kind].__name__],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert session.stdout is not None
    pid_text, root = session.stdout.readline().split()
    pid = int(pid_text)
    try:
        assert dbservers.pid_alive(pid)
        session.kill()
        session.wait()
        assert dbservers.wait_gone(pid, dbservers.STOP_TIMEOUT)
    finally:
        dbservers.signal_pid(pid, signal.SIGKILL)
        if session.stdin is not None:
            session.stdin.close()
        session.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(STARTERS))
def test_failed_start_kills_the_server(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the server process is up (here: creating the account) stops it."""
    started: list[DbServer] = []
    server_class = PostgresServer if kind == "postgresql" else MariaDbServer

    def fail(self: DbServer) -> None:
        started.append(self)
        raise RuntimeError("injected failure after start")

    monkeypatch.setattr(server_class, "_create_app_user", fail)
    with pytest.raises(RuntimeError, match="injected"):
        STARTERS[kind]()
    (server,) = started
    assert server.pid is not None
    assert not dbservers.pid_alive(server.pid)
    assert not server.root.exists()


@pytest.mark.parametrize("kind", sorted(STARTERS))
@pytest.mark.parametrize("ci_value", ["true", ""])
def test_missing_server_binary_skips_but_fails_in_ci(
    kind: str, ci_value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(dbservers, "PG_DIRS", [])
    monkeypatch.setattr(dbservers, "MARIADB_DIRS", [])
    monkeypatch.setenv("CI", ci_value)
    expected = pytest.fail.Exception if ci_value else pytest.skip.Exception
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match="not found") as info:
        STARTERS[kind]()
    assert info.type is expected
