"""The centralized_db store on real PostgreSQL and real MariaDB, on the schema
Glance 33.0.0's own ``db sync`` built (``glance_db``, one fresh database per
test on each server).

The core checks are the unit tier's (``tests/helpers/centralized.py``); what
only a server shows is here: the sessions' lock-wait timeout, a row lock held
by another session (retried, then ``DatabaseLocked``), a user without write
privilege (``check_writable`` refuses before anything is unlinked), MariaDB's
whole-second DATETIME, and a refused login (``DatabaseUnavailable``, no
password in the message).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, make_url, text

from glance_cache_agent.driver import DatabaseLocked, DatabaseReadOnly, DatabaseUnavailable
from glance_cache_agent.driver.centralized import CentralizedDriver
from tests.helpers import dbservers
from tests.helpers.cache import uid
from tests.helpers.centralized import (
    CORE_CHECKS,
    NODE_A,
    T0,
    check_maintenance_outcomes,
    check_timestamps_right_under_any_tz,
    insert_raw,
    open_node,
    raw_rows,
    two_nodes,
    utc,
)
from tests.helpers.dbservers import DbServer, register_node


def _backend(url: str) -> str:
    return make_url(url).get_backend_name()


@pytest.mark.parametrize("check", CORE_CHECKS, ids=lambda check: check.__name__)
def test_core_check(check: Callable[[str, Path], None], glance_db: str, tmp_path: Path) -> None:
    check(glance_db, tmp_path)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_timestamps_are_utc_whatever_the_tz(zone: str, glance_db: str, tmp_path: Path) -> None:
    check_timestamps_right_under_any_tz(glance_db, tmp_path, zone)


def test_maintenance_runs_unchanged_over_the_server(glance_db: str, tmp_path: Path) -> None:
    a, b = two_nodes(glance_db, tmp_path)
    b.store.record_cached(uid("a"), 3, T0)  # node B caches an image of the same id
    before_b = raw_rows(glance_db, b.store.node_id)
    check_maintenance_outcomes(
        a, lambda: insert_raw(glance_db, a.store.node_id, "README", utc(T0), 0, 0)
    )
    assert raw_rows(glance_db, b.store.node_id) == before_b


def test_sessions_wait_about_two_seconds_for_a_lock(glance_db: str, tmp_path: Path) -> None:
    a, _ = two_nodes(glance_db, tmp_path)
    query, expected = (
        ("SHOW lock_timeout", "2s")
        if _backend(glance_db) == "postgresql"
        else ("SELECT @@SESSION.innodb_lock_wait_timeout", 2)
    )
    assert a.store.db.read(lambda conn: conn.exec_driver_sql(query).scalar_one()) == expected


@pytest.fixture
def row_lock(glance_db: str, tmp_path: Path) -> Iterator[tuple[CentralizedDriver, Connection]]:
    """Node A with one row, and another session holding that row's lock
    (as Glance's UPDATE in an open transaction would)."""
    register_node(glance_db, NODE_A)
    a = open_node(glance_db, tmp_path, lock_timeout=0.001)  # PostgreSQL 1 ms, MariaDB 1 s
    a.store.record_cached(uid("hot"), 1, T0)
    engine = create_engine(glance_db)
    conn = engine.connect()
    conn.execute(
        text("SELECT hits FROM cached_images WHERE image_id = :i FOR UPDATE"), {"i": uid("hot")}
    )
    try:
        yield a, conn
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()
        a.close()


def test_a_held_row_lock_is_retried_then_raised_as_database_locked(
    row_lock: tuple[CentralizedDriver, Connection],
) -> None:
    a, _ = row_lock
    pauses: list[float] = []
    a.store.db.pause = pauses.append
    with pytest.raises(DatabaseLocked) as caught:
        a.store.record_hit(uid("hot"), T0 + 1)
    assert pauses == [0.05, 0.1]
    assert "3 attempts" in str(caught.value)


def test_a_row_lock_released_between_attempts_lets_the_write_through(
    row_lock: tuple[CentralizedDriver, Connection],
) -> None:
    a, holder = row_lock
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        holder.rollback()

    a.store.db.pause = pause
    a.store.record_hit(uid("hot"), T0 + 1)
    assert pauses == [0.05]
    assert a.store.rows_by_id([uid("hot")])[uid("hot")].hits == 1


def _read_only_url(request: pytest.FixtureRequest, url: str) -> str:
    """``url`` as a new user allowed SELECT only (least privilege minus the writes)."""
    backend = _backend(url)
    server: DbServer = request.getfixturevalue(dbservers.SERVER_FIXTURES[backend])
    user, password = f"gca_ro_{uuid.uuid4().hex[:8]}", "ro-pw-7"
    database = make_url(url).database
    with server.admin().connect() as conn:
        if backend == "postgresql":
            conn.execute(text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        else:
            conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(text(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'"))
    if backend == "postgresql":
        owner = create_engine(url)
        with owner.begin() as conn:
            conn.execute(text(f"GRANT SELECT ON node_reference, cached_images TO {user}"))
        owner.dispose()
    return make_url(url).set(username=user, password=password).render_as_string(False)


def test_check_writable_refuses_a_user_without_write_privilege(
    request: pytest.FixtureRequest, glance_db: str, tmp_path: Path
) -> None:
    register_node(glance_db, NODE_A)
    owner = open_node(glance_db, tmp_path)
    owner.store.record_cached(uid("kept"), 5, T0)
    before = raw_rows(glance_db, owner.store.node_id)
    reader = open_node(_read_only_url(request, glance_db), tmp_path / "ro")
    assert [r.image_id for r in reader.store.list_rows()] == [uid("kept")]
    with pytest.raises(DatabaseReadOnly):
        reader.store.check_writable()
    owner.store.check_writable()
    assert raw_rows(glance_db, owner.store.node_id) == before
    reader.close()
    owner.close()


def test_a_refused_login_is_unavailable_without_the_password(
    glance_db: str, tmp_path: Path
) -> None:
    register_node(glance_db, NODE_A)
    wrong = make_url(glance_db).set(password="Wrong-pw-42").render_as_string(False)
    with pytest.raises(DatabaseUnavailable) as caught:
        open_node(wrong, tmp_path)
    assert "Wrong-pw-42" not in str(caught.value)
    assert "***" in str(caught.value) or "cannot connect" in str(caught.value)
