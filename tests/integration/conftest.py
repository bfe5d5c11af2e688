"""Fixtures shared by the integration tier: a real cache, and the agent daemon
as a subprocess reporting to a real notify socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from glance_cache_agent.driver import CacheSettings, Driver
from tests.helpers.agent_process import Agent, NotifySocket


@pytest.fixture
def cache(tmp_path: Path) -> Driver:
    driver = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    driver.configure()
    return driver


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


@pytest.fixture
def agent(tmp_path: Path, cache: Driver, notify: NotifySocket) -> Iterator[Agent]:
    helper = Agent(tmp_path, cache, notify)
    try:
        yield helper
    finally:
        helper.close()
