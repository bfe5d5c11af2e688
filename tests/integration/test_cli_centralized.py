"""The CLI and the daemon on a centralized_db cache: real servers, real processes.

Exit codes (DESIGN section 4): a database the config names wrongly (no
``node_reference`` row for this node, missing tables, an unsupported server)
is a configuration error, 78; a server that is down is a failed run, 1, and
the daemon keeps retrying on schedule, reports it in ``/healthz`` and its
metrics, and recovers by itself when the server is back. The database
password never shows up in any output.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from glance_cache_agent.driver import Driver
from tests.helpers.agent_process import Agent, free_port, wait_until
from tests.helpers.cli import cli, make_cache, one_line
from tests.helpers.dbservers import DB_PASSWORD, register_node
from tests.helpers.tcp_proxy import TcpProxy

NODE = "http://node-a.example:9292"
OTHER_NODE = "http://node-b.example:9292"


def centralized_config(root: Path, cache: Driver, database: str, node_url: str = NODE) -> Path:
    """An agent config naming Glance's database and this node directly."""
    config = root / "agent.yaml"
    config.write_text(
        f"cache:\n  dir: {cache.base_dir}\n  driver: centralized_db\n"
        f"  database: '{database}'\n  node_url: {node_url}\n"
        f"agent:\n  runtime_dir: {root / 'run'}\n  lock_timeout: 0.2s\n"
    )
    return config


def assert_no_password(*outputs: str) -> None:
    for output in outputs:
        assert DB_PASSWORD not in output


def status_json(config: Path) -> dict[str, Any]:
    proc = cli("status", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    assert_no_password(proc.stdout, proc.stderr)
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


# ------------------------------------------------------------------ status


def test_status_names_the_driver_and_node(tmp_path: Path, cache: Driver, glance_db: str) -> None:
    register_node(glance_db, OTHER_NODE)
    register_node(glance_db, NODE)
    document = status_json(centralized_config(tmp_path, cache, glance_db))
    assert document["driver"] == "centralized_db"
    assert document["node_url"] == NODE
    assert document["cached_images"] == 0 and document["phantom_rows"] == 0
    human = cli("status", config=tmp_path / "agent.yaml")
    assert human.returncode == 0, human.stderr
    assert "centralized_db" in human.stdout and NODE in human.stdout


def test_sqlite_status_says_sqlite_and_no_node(tmp_path: Path) -> None:
    sqlite_cache = make_cache(tmp_path)
    document = status_json(sqlite_cache.config)
    assert document["driver"] == "sqlite"
    assert "node_url" not in document


# ------------------------------------------------------------------ refusals: 78


def test_unregistered_node_is_a_config_error(tmp_path: Path, cache: Driver, glance_db: str) -> None:
    register_node(glance_db, OTHER_NODE)
    config = centralized_config(tmp_path, cache, glance_db)
    for command in (("prune",), ("status", "--json"), ("list-cached",)):
        proc = cli(*command, config=config)
        assert proc.returncode == 78, proc.stderr
        line = one_line(proc.stderr)
        assert f"no node_reference row has node_reference_url '{NODE}'" in line
        assert OTHER_NODE in line  # what is registered, to spot a typo
        assert proc.stdout == ""
        assert_no_password(line)
    assert not (tmp_path / "run").exists()  # refused before any lock was taken


def test_missing_table_is_a_config_error(tmp_path: Path, cache: Driver) -> None:
    database = tmp_path / "glance.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TABLE node_reference (node_reference_id INTEGER PRIMARY KEY,"
            " node_reference_url VARCHAR(255) NOT NULL UNIQUE)"
        )
        conn.execute("INSERT INTO node_reference (node_reference_url) VALUES (?)", (NODE,))
    proc = cli("clean", config=centralized_config(tmp_path, cache, f"sqlite:///{database}"))
    assert proc.returncode == 78, proc.stderr
    assert "cached_images" in one_line(proc.stderr)


def test_unsupported_database_is_a_config_error(tmp_path: Path, cache: Driver) -> None:
    database = f"oracle://glance:{DB_PASSWORD}@db.example/glance"
    proc = cli("prune", config=centralized_config(tmp_path, cache, database))
    assert proc.returncode == 78
    line = one_line(proc.stderr)
    assert "'oracle'" in line and "not supported" in line
    assert_no_password(line, proc.stdout)


def test_xattr_in_glance_config_is_a_config_error(tmp_path: Path, cache: Driver) -> None:
    api = tmp_path / "glance-api.conf"
    api.write_text(f"[DEFAULT]\nimage_cache_dir = {cache.base_dir}\nimage_cache_driver = xattr\n")
    config = tmp_path / "agent.yaml"
    config.write_text(f"cache:\n  glance_config: {api}\n")
    proc = cli("status", config=config)
    assert proc.returncode == 78
    assert "image_cache_driver: is 'xattr'" in one_line(proc.stderr)


# ------------------------------------------------------------------ down: 1


def test_database_down_is_a_failed_run(tmp_path: Path, cache: Driver) -> None:
    closed = f"postgresql+psycopg2://glance:{DB_PASSWORD}@127.0.0.1:{free_port()}/glance"
    config = centralized_config(tmp_path, cache, closed)
    for command in (("prune",), ("status", "--json")):
        proc = cli(*command, config=config)
        assert proc.returncode == 1, proc.stderr
        line = one_line(proc.stderr)
        assert "glance:***@127.0.0.1" in line
        assert proc.stdout == ""
        assert_no_password(line)


# ------------------------------------------------------------------ check-config


def test_check_config_reads_glance_api_conf_and_hides_the_password(tmp_path: Path) -> None:
    database = f"mysql+pymysql://glance:{DB_PASSWORD}@db.example/glance"
    api = tmp_path / "glance-api.conf"
    api.write_text(
        f"[DEFAULT]\nimage_cache_dir = /srv/cache\nworker_self_reference_url = {NODE}\n"
        f"[database]\nconnection = {database}\n"
    )
    config = tmp_path / "agent.yaml"
    config.write_text(f"cache:\n  glance_config: {api}\n")
    human = cli("check-config", str(config))
    as_json = cli("check-config", str(config), "--json")
    assert human.returncode == as_json.returncode == 0, human.stderr + as_json.stderr
    assert_no_password(human.stdout, human.stderr, as_json.stdout, as_json.stderr)
    cache = json.loads(as_json.stdout)["config"]["cache"]
    assert cache["driver"] == "centralized_db"  # unset image_cache_driver: Glance's default
    assert cache["database"] == "mysql+pymysql://glance:***@db.example/glance"
    assert cache["node_url"] == NODE
    assert "mysql+pymysql://glance:***@db.example/glance" in human.stdout


# ------------------------------------------------------------------ the daemon


@pytest.mark.parametrize("glance_db", ["postgresql"], indirect=True)
def test_daemon_survives_a_database_outage(
    tmp_path: Path, cache: Driver, agent: Agent, glance_db: str
) -> None:
    """Down: failed runs counted, /healthz 503 naming it, scrape_success 0, no crash.
    Back: the next scheduled run succeeds and the cache state is served again."""
    register_node(glance_db, NODE)
    real = make_url(glance_db)
    assert real.host is not None and real.port is not None
    proxy = TcpProxy(real.host, real.port)
    proxy.restore()
    proxy.cut()  # the database is down when the agent starts
    database = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    daemon = agent.start(
        cache={"driver": "centralized_db", "database": database, "node_url": NODE},
        tasks={
            "prune": {"interval": "1s"},
            "clean": {"enabled": False},
            "reconcile": {"enabled": False},
        },
    )
    try:
        status, body = wait_until("/healthz 503", lambda: (h := daemon.health())[0] == 503 and h)
        reason = " ".join(body["reasons"])
        assert "task prune failed its last run: DatabaseUnavailable" in reason
        assert "glance:***@127.0.0.1" in reason
        samples = daemon.scrape()
        assert samples[("glance_cache_scrape_success", ())] == 0
        assert samples[("glance_cache_task_failures_total", (("task", "prune"),))] >= 1
        info = (("driver", "centralized_db"), ("node_url", NODE))
        assert samples[("glance_cache_info", info)] == 1
        assert daemon.proc.poll() is None  # a failed run, not a crash

        proxy.restore()  # the database is back
        wait_until("/healthz 200", lambda: daemon.health()[0] == 200)
        wait_until(
            "scrape_success 1",
            lambda: daemon.scrape().get(("glance_cache_scrape_success", ())) == 1,
        )
    finally:
        proxy.cut()
    assert_no_password(daemon.output)
