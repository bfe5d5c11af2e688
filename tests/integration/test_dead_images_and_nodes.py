"""Images deleted in Glance, and the fleet-wide ``nodes`` command, on real servers.

With SELECT on Glance's ``images`` table (same database, ``glance_db``: the
schema of Glance 33.0.0's own ``db sync`` on real PostgreSQL and MariaDB),
cached images Glance deleted (no ``images`` row, ``deleted`` true, or status
``deleted`` / ``pending_delete`` / ``killed``) are prune's first victims and
are counted by the ``dead_images`` / ``dead_bytes`` gauges. A user without
SELECT on ``images`` gets one warning and plain LRU. ``nodes`` answers for
every node from any node, as a SELECT-only user.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, make_url, text

from glance_cache_agent.config import MetricsConfig
from glance_cache_agent.driver import Driver
from glance_cache_agent.driver.centralized import CentralizedDriver
from glance_cache_agent.exporter.cache_state import compute_cache_state
from glance_cache_agent.exporter.collector import CacheStateCollector
from glance_cache_agent.maintenance import PrunePolicy, run_prune
from tests.helpers import dbservers
from tests.helpers.cache import cache_image, no_pause, uid
from tests.helpers.centralized import NODE_A, NODE_B, open_node, raw, raw_rows, two_nodes
from tests.helpers.cli import cli
from tests.helpers.dbservers import DB_PASSWORD, DbServer, register_node

SIZE = 1000
#: 2026-03-01 12:00:00 UTC: whole seconds, which MariaDB's DATETIME keeps exactly
T0 = 1772366400.0
#: (name, images row as (status, deleted) or None for no row, seconds after T0 of its last read)
IMAGES: list[tuple[str, tuple[str, bool] | None, int]] = [
    ("alive-old", ("active", False), 0),
    ("dead-protected", ("deleted", True), 5),
    ("dead-norow", None, 10),
    ("dead-deleted", ("deleted", True), 20),
    ("dead-killed", ("killed", False), 30),
    ("dead-pending", ("pending_delete", False), 40),
    ("alive-new", ("active", False), 50),
]
DEAD = [uid(n) for n, _r, _t in IMAGES if n.startswith("dead-") and n != "dead-protected"]


def _add_image(url: str, image_id: str, status: str, deleted: bool) -> None:
    """An ``images`` row written through Glance's own model (its defaults applied)."""
    from glance.db.sqlalchemy.models import Image  # type: ignore[import-untyped]

    now = datetime.now(UTC).replace(tzinfo=None)
    with raw(url) as conn:
        conn.execute(
            insert(Image.__table__).values(
                id=image_id,
                name=image_id,
                status=status,
                deleted=deleted,
                created_at=now,
                visibility="shared",
                min_disk=0,
                min_ram=0,
                protected=False,
                os_hidden=False,
            )
        )


def _stamp(url: str, driver: CentralizedDriver, image_id: str, seconds: int) -> None:
    """Set the ``last_accessed`` of ``driver``'s row of ``image_id`` to ``T0 + seconds``."""
    with raw(url) as conn:
        conn.execute(
            text(
                "UPDATE cached_images SET last_accessed = :t"
                " WHERE image_id = :i AND node_reference_id = :n"
            ),
            {
                "t": datetime.fromtimestamp(T0 + seconds, UTC).replace(tzinfo=None),
                "i": image_id,
                "n": driver.store.node_id,
            },
        )


def _fill(url: str, driver: CentralizedDriver) -> None:
    """Cache IMAGES on ``driver``'s node and give Glance the ``images`` rows they name."""
    for name, glance_row, seconds in IMAGES:
        cache_image(driver, uid(name), SIZE)
        _stamp(url, driver, uid(name), seconds)
        if glance_row is not None:
            _add_image(url, uid(name), *glance_row)


def _policy() -> PrunePolicy:
    # 7 images of SIZE bytes down to 3: four victims, one dead image protected
    return PrunePolicy(
        max_size=3 * SIZE, batch_pause=0, protected_images=frozenset({uid("dead-protected")})
    )


def _user(request: pytest.FixtureRequest, url: str, grants: str, images: bool) -> str:
    """``url`` as a new user with ``grants`` on the cache tables (and SELECT on
    ``images`` when ``images``), nothing else."""
    backend = make_url(url).get_backend_name()
    server: DbServer = request.getfixturevalue(dbservers.SERVER_FIXTURES[backend])
    user, password = f"gca_{uuid.uuid4().hex[:8]}", "least-pw-7"
    database = make_url(url).database
    tables = ["node_reference", "cached_images"]
    with server.admin().connect() as conn:
        if backend == "postgresql":
            conn.execute(text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        else:
            conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            for table in tables:
                conn.execute(text(f"GRANT {grants} ON `{database}`.{table} TO '{user}'@'%'"))
            if images:
                conn.execute(text(f"GRANT SELECT ON `{database}`.images TO '{user}'@'%'"))
    if backend == "postgresql":
        with raw(url) as conn:
            conn.execute(text(f"GRANT {grants} ON {', '.join(tables)} TO {user}"))
            conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}"))
            if images:
                conn.execute(text(f"GRANT SELECT ON images TO {user}"))
    return make_url(url).set(username=user, password=password).render_as_string(False)


# ------------------------------------------------------------------ prune and metrics


def test_prune_evicts_images_deleted_in_glance_first(glance_db: str, tmp_path: Path) -> None:
    register_node(glance_db, NODE_A)
    driver = open_node(glance_db, tmp_path)
    _fill(glance_db, driver)
    state = compute_cache_state(driver, 3 * SIZE, per_image_limit=0)
    assert (state.dead_images, state.dead_bytes) == (5, 5 * SIZE)

    result = run_prune(driver, _policy(), pause=no_pause)

    # plain LRU would have taken alive-old first; the protected dead image stays
    assert result.images == DEAD
    assert result.dead_images == 4 and result.protected_skipped == 1
    assert sorted(raw_rows(glance_db, driver.store.node_id)) == sorted(
        uid(n) for n in ("alive-old", "dead-protected", "alive-new")
    )
    state = compute_cache_state(driver, 3 * SIZE, per_image_limit=0)
    assert (state.dead_images, state.dead_bytes) == (1, SIZE)
    driver.close()


def test_idle_images_behind_the_dead_ones_are_still_evicted(glance_db: str, tmp_path: Path) -> None:
    register_node(glance_db, NODE_A)
    driver = open_node(glance_db, tmp_path)
    _fill(glance_db, driver)
    # under max_size; only alive-old (read at T0) is idle a minute later
    policy = PrunePolicy(max_size=100 * SIZE, max_idle=60, batch_pause=0)

    result = run_prune(driver, policy, now=T0 + 63, pause=no_pause)

    assert result.images == [uid("alive-old")]
    driver.close()


def test_dead_weight_gauges_are_exported(glance_db: str, tmp_path: Path) -> None:
    register_node(glance_db, NODE_A)
    driver = open_node(glance_db, tmp_path)
    _fill(glance_db, driver)
    collector = CacheStateCollector(
        lambda: driver, 10 * SIZE, MetricsConfig(), spawn=lambda _target: None
    )
    assert collector.refresh() is not None
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("glance_cache_dead_images") == 5
    assert registry.get_sample_value("glance_cache_dead_bytes") == 5 * SIZE
    driver.close()


def test_sqlite_store_has_no_dead_weight(cache: Driver) -> None:
    cache_image(cache, uid("any"), SIZE)
    state = compute_cache_state(cache, 10 * SIZE, per_image_limit=0)
    assert state.dead_images is None and state.dead_bytes is None
    collector = CacheStateCollector(
        lambda: cache, 10 * SIZE, MetricsConfig(), spawn=lambda _t: None
    )
    assert collector.refresh() is not None
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("glance_cache_dead_images") is None


def test_without_select_on_images_prune_is_plain_lru_with_one_warning(
    request: pytest.FixtureRequest,
    glance_db: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_node(glance_db, NODE_A)
    _fill(glance_db, open_node(glance_db, tmp_path))
    least = _user(request, glance_db, "SELECT, INSERT, UPDATE, DELETE", images=False)
    driver = open_node(least, tmp_path)
    caplog.set_level(logging.WARNING)

    state = compute_cache_state(driver, 3 * SIZE, per_image_limit=0)
    result = run_prune(driver, _policy(), pause=no_pause)

    assert state.dead_images is None and state.dead_bytes is None
    assert result.images == [
        uid(n) for n in ("alive-old", "dead-norow", "dead-deleted", "dead-killed")
    ]
    assert result.dead_images == 0
    warnings = [r for r in caplog.records if "cannot read Glance's images table" in r.getMessage()]
    assert len(warnings) == 1
    driver.close()


# ------------------------------------------------------------------ nodes


def _nodes_config(root: Path, database: str) -> Path:
    """A config with no cache of its own: ``nodes`` needs only the database."""
    config = root / "agent.yaml"
    config.write_text(
        f"cache:\n  dir: {root}\n  driver: centralized_db\n  database: '{database}'\n"
        f"  node_url: http://any-node.example:9292\n"
    )
    return config


def _nodes(config: Path, *args: str) -> Any:
    proc = cli("nodes", "--json", *args, config=config)
    assert proc.returncode == 0, proc.stderr
    assert DB_PASSWORD not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _two_filled_nodes(url: str, root: Path) -> tuple[CentralizedDriver, CentralizedDriver]:
    a, b = two_nodes(url, root)
    _fill(url, a)
    cache_image(b, uid("alive-old"), 3 * SIZE)
    cache_image(b, uid("dead-norow"), 2 * SIZE)
    _stamp(url, b, uid("alive-old"), 100)
    _stamp(url, b, uid("dead-norow"), 60)
    return a, b


def test_nodes_answers_for_the_fleet_as_a_select_only_user(
    request: pytest.FixtureRequest, glance_db: str, tmp_path: Path
) -> None:
    a, b = _two_filled_nodes(glance_db, tmp_path)
    before = (raw_rows(glance_db, a.store.node_id), raw_rows(glance_db, b.store.node_id))
    reader = _user(request, glance_db, "SELECT", images=True)
    config = _nodes_config(tmp_path, reader)

    fleet = _nodes(config)

    assert fleet["images_readable"] is True
    by_url = {node["node_url"]: node for node in fleet["nodes"]}
    assert by_url[NODE_A] == {
        "node_url": NODE_A,
        "node_reference_id": a.store.node_id,
        "cached_images": 7,
        "cached_bytes": 7 * SIZE,
        "dead_images": 5,
        "dead_bytes": 5 * SIZE,
        "last_accessed": T0 + 50,
    }
    assert by_url[NODE_B]["cached_images"] == 2 and by_url[NODE_B]["cached_bytes"] == 5 * SIZE
    assert (by_url[NODE_B]["dead_images"], by_url[NODE_B]["dead_bytes"]) == (1, 2 * SIZE)
    assert by_url[NODE_B]["last_accessed"] == T0 + 100

    one = _nodes(config, uid("dead-norow"))
    assert one["image_id"] == uid("dead-norow") and one["dead"] is True
    assert [(n["node_url"], n["size"]) for n in one["nodes"]] == [
        (NODE_A, SIZE),
        (NODE_B, 2 * SIZE),
    ]
    only_a = _nodes(config, uid("alive-new"))
    assert only_a["dead"] is False and [n["node_url"] for n in only_a["nodes"]] == [NODE_A]
    human = cli("nodes", config=config)
    assert human.returncode == 0 and NODE_A in human.stdout and NODE_B in human.stdout
    after = (raw_rows(glance_db, a.store.node_id), raw_rows(glance_db, b.store.node_id))
    assert after == before
    a.close()
    b.close()


def test_nodes_without_select_on_images_leaves_dead_weight_unknown(
    request: pytest.FixtureRequest, glance_db: str, tmp_path: Path
) -> None:
    a, b = _two_filled_nodes(glance_db, tmp_path)
    config = _nodes_config(tmp_path, _user(request, glance_db, "SELECT", images=False))

    fleet = _nodes(config)

    assert fleet["images_readable"] is False
    assert [(n["cached_images"], n["dead_images"], n["dead_bytes"]) for n in fleet["nodes"]] == [
        (7, None, None),
        (2, None, None),
    ]
    assert _nodes(config, uid("alive-new"))["dead"] is None
    a.close()
    b.close()


def test_nodes_refuses_the_sqlite_driver_and_a_non_uuid(tmp_path: Path) -> None:
    config = tmp_path / "sqlite.yaml"
    config.write_text(f"cache:\n  dir: {tmp_path}\n  driver: sqlite\n")
    sqlite = cli("nodes", config=config)
    assert sqlite.returncode == 78
    assert "only centralized_db" in sqlite.stderr
    bad = cli("nodes", "../etc", config=_nodes_config(tmp_path, "sqlite:///unused.db"))
    assert bad.returncode == 2
    assert "not a UUID" in bad.stderr
