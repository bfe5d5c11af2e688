"""run_task: the one path by which the daemon and the CLI run maintenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from glance_cache_agent.config import AgentConfig, CacheConfig, Config, PruneConfig
from glance_cache_agent.driver import CacheDirectoryError, Driver
from glance_cache_agent.service.locks import LockBusy, maintenance_lock
from glance_cache_agent.service.runner import open_driver, run_task, summary_fields
from tests.helpers.cache import cache_image, full_state, read_image, uid, write_file


def _config(driver: Driver, tmp_path: Path, **prune: object) -> Config:
    return Config(
        cache=CacheConfig(dir=driver.base_dir, max_size=2048),
        prune=dataclasses.replace(PruneConfig(batch_pause=0), **prune),  # type: ignore[arg-type]
        agent=AgentConfig(runtime_dir=str(tmp_path / "run"), lock_timeout=0.2),
    )


def _three_images(driver: Driver) -> None:
    for name in (uid("a"), uid("b"), uid("c")):
        cache_image(driver, name, 1024)
    for name in (uid("a"), uid("b"), uid("c")):
        read_image(driver, name)  # a is the least recently accessed


def test_prune_runs_under_the_maintenance_lock(driver: Driver, tmp_path: Path) -> None:
    _three_images(driver)
    config = _config(driver, tmp_path)

    outcome = run_task(config, "prune", trigger="scheduled")

    assert outcome.task == "prune" and outcome.trigger == "scheduled"
    assert outcome.result.to_dict()["images"] == [uid("a")]
    assert (tmp_path / "run" / "maintenance.lock").is_file()


def test_a_held_lock_stops_a_real_run_but_not_a_dry_run(driver: Driver, tmp_path: Path) -> None:
    _three_images(driver)
    config = _config(driver, tmp_path)
    before = full_state(driver)
    with maintenance_lock(config.agent.runtime_dir, timeout=0):
        with pytest.raises(LockBusy):
            run_task(config, "prune", lock_wait=0.2)
        assert full_state(driver) == before
        dry = run_task(config, "prune", dry_run=True)
    assert dry.result.to_dict()["images"] == [uid("a")]
    assert full_state(driver) == before


def test_overrides_from_the_command_line(driver: Driver, tmp_path: Path) -> None:
    _three_images(driver)
    write_file(Path(driver.base_dir) / "incomplete" / uid("s"), 10, age=7200)
    config = _config(driver, tmp_path)

    prune = run_task(config, "prune", dry_run=True, max_size=1024)
    clean = run_task(config, "clean", dry_run=True, stall_time=3600)

    assert prune.result.to_dict()["images"] == [uid("a"), uid("b")]
    assert clean.result.to_dict()["stalled_removed"] == 1


def test_stop_ends_a_prune_between_batches(driver: Driver, tmp_path: Path) -> None:
    _three_images(driver)
    config = _config(driver, tmp_path, batch_size=1)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # let the first batch through, then stop

    outcome = run_task(config, "prune", max_size=0, stop=stop)

    result = outcome.result.to_dict()
    assert result["stopped_by"] == "stopped"
    assert result["images"] == [uid("a")]
    assert driver.is_cached(uid("b")) and driver.is_cached(uid("c"))


def test_missing_cache_dir_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    config = Config(cache=CacheConfig(dir=str(missing)))
    with pytest.raises(CacheDirectoryError, match="does not exist"):
        open_driver(config)
    assert not missing.exists()
    file_instead = write_file(tmp_path / "file", 1)
    with pytest.raises(CacheDirectoryError, match="not a directory"):
        open_driver(Config(cache=CacheConfig(dir=str(file_instead))))


def test_unknown_task_is_refused(driver: Driver, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        run_task(_config(driver, tmp_path), "defrag")


def test_summary_line_fields(driver: Driver, tmp_path: Path) -> None:
    _three_images(driver)
    outcome = run_task(_config(driver, tmp_path), "prune")
    fields = summary_fields(outcome)
    assert fields["task"] == "prune" and fields["trigger"] == "adhoc"
    assert fields["pruned_images"] == 1 and fields["pruned_bytes"] == 1024
    assert fields["dry_run"] is False and fields["duration_seconds"] >= 0
