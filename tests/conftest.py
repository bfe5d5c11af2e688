"""Shared fixtures: a real cache directory with a real ``cache.db``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from glance_cache_agent.driver import CacheSettings, Driver
from tests.helpers.dbservers import (  # noqa: F401  (fixtures: real database servers)
    glance_db,
    glance_db_sqlite,
    mariadb_server,
    postgres_server,
)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_driver(cache_dir: Path) -> Callable[..., Driver]:
    """Build a configured Driver on ``cache_dir``; keyword args go to CacheSettings."""

    def factory(**overrides: object) -> Driver:
        settings = CacheSettings(cache_dir=str(cache_dir), **overrides)  # type: ignore[arg-type]
        driver = Driver(settings)
        driver.configure()
        return driver

    return factory


@pytest.fixture
def driver(make_driver: Callable[..., Driver]) -> Driver:
    return make_driver()
