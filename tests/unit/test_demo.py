"""The demo cache behind ``make run``: loadable, over its limit, with work for every task."""

from __future__ import annotations

from pathlib import Path

from glance_cache_agent.cli.demo import build_demo
from glance_cache_agent.config import load_config
from glance_cache_agent.exporter.cache_state import compute_cache_state
from glance_cache_agent.service.runner import open_driver, run_task


def test_demo_cache_gives_every_task_work(tmp_path: Path) -> None:
    config_path = build_demo(tmp_path, images=40)
    config = load_config(str(config_path))
    driver = open_driver(config)
    state = compute_cache_state(driver, config.cache.max_size, per_image_limit=5)

    assert config.cache.dir == str((tmp_path / "cache").resolve())
    assert state.size_bytes > config.cache.max_size, "the demo starts over its limit"
    assert state.cached_images == 41  # 40 tracked images and one orphan
    assert state.orphan_files == 1 and state.phantom_rows == 1
    assert state.incomplete_images == 4 and state.invalid_images == 2 and state.queued_images == 4
    assert len(state.top_images) == 5
    assert state.foreign_names == ("README",)  # an operator's note: foreign, never touched

    prune = run_task(config, "prune", dry_run=True).result.to_dict()
    clean = run_task(config, "clean", dry_run=True).result.to_dict()
    reconcile = run_task(config, "reconcile", dry_run=True).result.to_dict()
    assert prune["pruned_images"] > 0 and prune["stopped_by"] == "target_reached"
    assert clean["stalled_removed"] == 3 and clean["invalid_removed"] == 2
    # the orphan was just created (ctime now), so it is still within orphan_grace
    assert reconcile["orphans_in_grace"] == 1 and reconcile["phantoms_removed"] == 1


def test_an_existing_demo_is_kept(tmp_path: Path) -> None:
    first = build_demo(tmp_path, images=5)
    marker = tmp_path / "cache" / "keep-me"
    marker.write_text("x")
    assert build_demo(tmp_path, images=5) == first
    assert marker.exists()
