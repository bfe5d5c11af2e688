"""cache.driver / cache.database / cache.node_url: read from Glance's files, checked, never leaked.

Glance's own files decide the driver by default (an unset image_cache_driver
is centralized_db, as in Glance since 2024.1); a centralized_db cache needs a
database URL and a node URL, and the refusal names which one and where it
would come from. The database password never reaches check-config output,
error lines, /healthz reasons, logs or metrics.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from glance_cache_agent.cli.errors import failure
from glance_cache_agent.config import (
    Config,
    ConfigError,
    config_warnings,
    effective_config_dict,
    load_config,
    render_effective_config,
)
from glance_cache_agent.driver import CacheSettings, Driver
from glance_cache_agent.driver.errors import (
    DatabaseUnavailable,
    GlanceSchemaMismatch,
    NodeNotRegistered,
    SchemaMismatch,
    UnsupportedDatabase,
)
from glance_cache_agent.errors import ExitCode
from glance_cache_agent.exporter.cache_state import StoreInfo
from glance_cache_agent.exporter.metrics import AgentMetrics
from glance_cache_agent.redact import mask_text, mask_url
from glance_cache_agent.service.logs import configure_logging, get_logger
from glance_cache_agent.service.runner import run_problem

PASSWORD = "Sup3r-s3cret"
DB_URL = f"mysql+pymysql://glance:{PASSWORD}@db.example/glance?charset=utf8"
MASKED_DB_URL = "mysql+pymysql://glance:***@db.example/glance?charset=utf8"
NODE = "http://node-a.example:9292"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, yaml_text: str, api: str | None = None) -> Config | ConfigError:
    """The config (or the ConfigError) of ``yaml_text``; ``api`` is glance-api.conf."""
    if api is not None:
        write(tmp_path / "glance-api.conf", api)
    config = write(tmp_path / "agent.yaml", yaml_text)
    try:
        return load_config(str(config))
    except ConfigError as exc:
        return exc


GLANCE_ONLY = "cache:\n  glance_config: glance-api.conf\n"
CENTRALIZED_API = f"""\
[DEFAULT]
image_cache_dir = /srv/cache
image_cache_driver = centralized_db
worker_self_reference_url = {NODE}

[database]
connection = {DB_URL}
"""


# ------------------------------------------------------------------ defaults


def test_centralized_db_settings_come_from_glance_files(tmp_path: Path) -> None:
    config = load(tmp_path, GLANCE_ONLY, CENTRALIZED_API)
    assert not isinstance(config, ConfigError), config
    api = tmp_path / "glance-api.conf"
    assert (config.cache.driver, config.cache.database, config.cache.node_url) == (
        "centralized_db",
        DB_URL,
        NODE,
    )
    assert config.sources["cache.driver"] == f"{api} [DEFAULT] image_cache_driver"
    assert config.sources["cache.database"] == f"{api} [database] connection"
    assert config.sources["cache.node_url"] == f"{api} [DEFAULT] worker_self_reference_url"


def test_unset_image_cache_driver_means_centralized_db(tmp_path: Path) -> None:
    api = CENTRALIZED_API.replace("image_cache_driver = centralized_db\n", "")
    config = load(tmp_path, GLANCE_ONLY, api)
    assert not isinstance(config, ConfigError), config
    assert config.cache.driver == "centralized_db"
    assert config.sources["cache.driver"].startswith("Glance's default: no Glance config file")


def test_without_glance_config_the_driver_is_sqlite(tmp_path: Path) -> None:
    config = load(tmp_path, "cache:\n  dir: /srv/cache\n")
    assert not isinstance(config, ConfigError)
    assert config.cache.driver == "sqlite"
    assert config.cache.database is None and config.cache.node_url is None
    null = load(tmp_path, "cache:\n  dir: /srv/cache\n  driver: null\n")
    assert not isinstance(null, ConfigError)
    assert null.cache.driver == "sqlite"


def test_sqlite_glance_driver_still_reads_as_sqlite(tmp_path: Path) -> None:
    api = "[DEFAULT]\nimage_cache_dir = /srv/cache\nimage_cache_driver = SQLite\n"
    config = load(tmp_path, GLANCE_ONLY, api)
    assert not isinstance(config, ConfigError), config
    assert config.cache.driver == "sqlite"


def test_yaml_keys_override_glance_and_null_means_glance(tmp_path: Path) -> None:
    other_url = "postgresql://agent:other@pg/glance"
    yaml_text = (
        f"{GLANCE_ONLY}  database: {other_url}\n  node_url: http://node-b:9292\n  driver: null\n"
    )
    config = load(tmp_path, yaml_text, CENTRALIZED_API)
    assert not isinstance(config, ConfigError), config
    assert config.cache.driver == "centralized_db"  # null: Glance's
    assert config.cache.database == other_url
    assert config.cache.node_url == "http://node-b:9292"
    forced = load(tmp_path, f"{GLANCE_ONLY}  driver: sqlite\n", CENTRALIZED_API)
    assert not isinstance(forced, ConfigError)
    assert forced.cache.driver == "sqlite"


def test_connection_is_substituted_like_oslo_config(tmp_path: Path) -> None:
    api = CENTRALIZED_API.replace(f"connection = {DB_URL}", "connection = $db_base/glance\n")
    api += f"db_base = mysql+pymysql://glance:{PASSWORD}@db.example\n"
    config = load(tmp_path, GLANCE_ONLY, api)
    assert not isinstance(config, ConfigError), config
    assert config.cache.database == f"mysql+pymysql://glance:{PASSWORD}@db.example/glance"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("where", ["glance", "yaml"])
def test_xattr_is_refused(tmp_path: Path, where: str) -> None:
    if where == "glance":
        api = "[DEFAULT]\nimage_cache_dir = /srv/cache\nimage_cache_driver = xattr\n"
        error = load(tmp_path, GLANCE_ONLY, api)
        expected = (
            f"{tmp_path / 'glance-api.conf'}:3: [DEFAULT] image_cache_driver: is 'xattr': image"
            " metadata lives in extended attributes on the files, in no database, so this agent"
            " refuses to manage this cache; only the sqlite and centralized_db drivers are"
            " supported"
        )
    else:
        error = load(tmp_path, "cache:\n  driver: xattr\n")
        expected = (
            f"{tmp_path / 'agent.yaml'}:2: cache.driver: must be one of sqlite, centralized_db,"
            " got 'xattr'"
        )
    assert isinstance(error, ConfigError)
    assert error.exit_code == ExitCode.CONFIG
    assert str(error) == expected


@pytest.mark.parametrize(
    ("drop", "key", "glance_option"),
    [
        (f"connection = {DB_URL}\n", "cache.database", "[database] connection"),
        (
            f"worker_self_reference_url = {NODE}\n",
            "cache.node_url",
            "[DEFAULT] worker_self_reference_url",
        ),
    ],
)
def test_centralized_db_without_database_or_node_url_names_which(
    tmp_path: Path, drop: str, key: str, glance_option: str
) -> None:
    error = load(tmp_path, GLANCE_ONLY, CENTRALIZED_API.replace(drop, ""))
    assert isinstance(error, ConfigError)
    api = tmp_path / "glance-api.conf"
    assert str(error) == (
        f"{tmp_path / 'agent.yaml'}:2: cache.glance_config: cache.driver is centralized_db"
        f" ({api} [DEFAULT] image_cache_driver), but {key} is not set here and no Glance config"
        f" file sets {glance_option}; set one of them"
    )
    assert PASSWORD not in str(error)


def test_centralized_db_set_in_yaml_without_glance_files(tmp_path: Path) -> None:
    error = load(tmp_path, f"cache:\n  driver: centralized_db\n  node_url: {NODE}\n")
    assert isinstance(error, ConfigError)
    assert str(error) == (
        f"{tmp_path / 'agent.yaml'}:2: cache.driver: is centralized_db but cache.database is"
        " not set: set it, or name glance-api.conf in cache.glance_config to read it from"
        " [database] connection"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"oracle://glance:{PASSWORD}@db/glance",
            "cache.database: database 'oracle' in 'oracle://glance:***@db/glance' is not"
            " supported: use postgresql://, mysql+pymysql:// (MySQL, MariaDB) or sqlite://"
            " (tests)",
        ),
        (
            PASSWORD,
            "cache.database: must be an SQLAlchemy URL such as"
            " mysql+pymysql://glance:PASSWORD@db/glance (no scheme:// found)",
        ),
    ],
)
def test_bad_database_urls_are_refused_without_the_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    error = load(tmp_path, f"cache:\n  database: '{url}'\n")
    assert isinstance(error, ConfigError)
    assert str(error).endswith(expected)
    assert PASSWORD not in str(error)
    api = CENTRALIZED_API.replace(DB_URL, url)
    from_glance = load(tmp_path, GLANCE_ONLY, api)
    assert isinstance(from_glance, ConfigError)
    assert PASSWORD not in str(from_glance)


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (DB_URL, MASKED_DB_URL),
        ("postgresql://glance:p@ss/w@rd@db:5432/glance", "postgresql://glance:***@db:5432/glance"),
        ("postgresql://glance@db/glance?password=pw&sslmode=require",
         "postgresql://glance@db/glance?password=***&sslmode=require"),
        ("postgresql://glance@db/glance", "postgresql://glance@db/glance"),
        ("sqlite:////var/lib/glance/glance.sqlite", "sqlite:////var/lib/glance/glance.sqlite"),
    ],
)  # fmt: skip
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_text_masks_every_url_in_a_message() -> None:
    message = f'cannot connect to {DB_URL} (via "{DB_URL}"); retry'
    assert mask_text(message) == f'cannot connect to {MASKED_DB_URL} (via "{MASKED_DB_URL}"); retry'


def test_check_config_output_never_shows_the_password(tmp_path: Path) -> None:
    config = load(tmp_path, GLANCE_ONLY, CENTRALIZED_API)
    assert not isinstance(config, ConfigError), config
    text = render_effective_config(config)
    document = effective_config_dict(config)
    assert PASSWORD not in text and PASSWORD not in repr(document) and PASSWORD not in repr(config)
    assert MASKED_DB_URL in text
    assert document["config"]["cache"]["database"] == MASKED_DB_URL
    assert document["config"]["cache"]["node_url"] == NODE


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NodeNotRegistered(MASKED_DB_URL, NODE, "no node_reference row"), ExitCode.CONFIG),
        (
            GlanceSchemaMismatch(MASKED_DB_URL, "table 'cached_images' does not exist"),
            ExitCode.CONFIG,
        ),
        # a damaged cache.db is a failed run, as before the centralized store
        (SchemaMismatch("/c/cache.db", "table 'cached_images' does not exist"), ExitCode.FAILED),
        (UnsupportedDatabase("install glance-cache-agent[postgresql]"), ExitCode.CONFIG),
        (DatabaseUnavailable(MASKED_DB_URL, "connection refused"), ExitCode.FAILED),
    ],
)
def test_database_errors_map_to_their_exit_codes(exc: Exception, code: ExitCode) -> None:
    known = failure(exc)
    assert known is not None and known[1] == code


def test_error_lines_and_health_reasons_mask_a_quoted_url() -> None:
    exc = DatabaseUnavailable(DB_URL, f"could not connect with {DB_URL}")
    known = failure(exc)
    assert known is not None
    assert PASSWORD not in known[0] and MASKED_DB_URL in known[0]
    problem = run_problem(exc)
    assert problem is not None and PASSWORD not in problem and MASKED_DB_URL in problem


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logs_never_show_the_password(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)
    log = get_logger("test.centralized")
    log.error("cannot connect", url=DB_URL)
    logging.getLogger("sqlalchemy.pool").warning("lost connection to %s", DB_URL)
    try:
        raise RuntimeError(f"connect failed: {DB_URL}")
    except RuntimeError:
        log.exception("task failed")
    out = stream.getvalue()
    assert out.count("glance:***@db.example") >= 3
    assert PASSWORD not in out


# ------------------------------------------------------------------ status and metrics


def scrape(metrics: AgentMetrics) -> str:
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode()


def test_info_metric_names_the_driver_and_node() -> None:
    metrics = AgentMetrics(tasks=["prune"], store=StoreInfo.of("centralized_db", NODE))
    assert f'glance_cache_info{{driver="centralized_db",node_url="{NODE}"}} 1.0' in scrape(metrics)
    metrics.set_store(StoreInfo.of("sqlite", NODE))  # a reload switching the driver
    text = scrape(metrics)
    assert 'glance_cache_info{driver="sqlite"} 1.0' in text
    assert "node_url=" not in text


def test_store_info_of_status_and_metrics() -> None:
    assert StoreInfo.of("sqlite", None).as_dict() == {"driver": "sqlite"}
    assert StoreInfo.of("centralized_db", NODE).as_dict() == {
        "driver": "centralized_db",
        "node_url": NODE,
    }
    with_password = StoreInfo.of("centralized_db", "https://u:pw@node:9292")
    assert with_password.as_dict()["node_url"] == "https://u:***@node:9292"


# ------------------------------------------------------------------ start-up cost


def _imports_sqlalchemy(tmp_path: Path, yaml_text: str, *argv: str) -> bool:
    """Whether running the CLI command ``argv`` on config ``yaml_text`` imports SQLAlchemy."""
    config = write(tmp_path / "probe.yaml", yaml_text)
    probe = (
        "import contextlib, io, sys\nfrom glance_cache_agent.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({['-c', str(config), *argv]!r})\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    return run.stdout.strip().splitlines()[-1] == "True"


def test_a_sqlite_cache_never_imports_sqlalchemy(tmp_path: Path) -> None:
    """Commands on a sqlite cache start fast: SQLAlchemy is for centralized_db only."""
    driver = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    driver.configure()
    sqlite_yaml = f"cache:\n  dir: {driver.base_dir}\nagent:\n  runtime_dir: {tmp_path / 'run'}\n"
    assert not _imports_sqlalchemy(tmp_path, sqlite_yaml, "prune")
    assert not _imports_sqlalchemy(tmp_path, sqlite_yaml, "status", "--json")
    database = f"sqlite:///{tmp_path / 'glance.sqlite'}"
    centralized_yaml = f"{sqlite_yaml}  lock_timeout: 1s\n".replace(
        "cache:\n",
        f"cache:\n  driver: centralized_db\n  database: {database}\n  node_url: {NODE}\n",
    )
    assert _imports_sqlalchemy(tmp_path, centralized_yaml, "status", "--json")


def test_no_lock_path_warning_for_a_leftover_cache_db_with_centralized_db(tmp_path: Path) -> None:
    """glance-api's centralized_db driver never creates ``image_cache_db_init``:
    a stale ``cache.db`` beside it is no sign of a wrong lock_path."""
    cache_dir = tmp_path / "cache"
    write(cache_dir / "cache.db", "")
    yaml_text = f"cache:\n  dir: {cache_dir}\n"
    sqlite = load(tmp_path, yaml_text)
    centralized = load(
        tmp_path, f"{yaml_text}  driver: centralized_db\n  database: {DB_URL}\n  node_url: {NODE}\n"
    )
    assert not isinstance(sqlite, ConfigError) and not isinstance(centralized, ConfigError)
    assert any("image_cache_db_init" in w for w in config_warnings(sqlite))
    assert config_warnings(centralized) == []
