"""Run the agent's CLI as operators do: a real subprocess on a real cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glance_cache_agent.driver import CacheSettings, Driver

ENV_VAR = "GLANCE_CACHE_AGENT_CONFIG"

CONFIG = """\
cache:
  dir: {cache_dir}
  max_size: 2KiB
clean:
  settle_time: 0s
prune:
  batch_pause: 0s
reconcile:
  orphan_grace: 0s
agent:
  runtime_dir: {run_dir}
  lock_timeout: 0.2s
  glance_lock_timeout: 0.2s
"""


@dataclass
class Cache:
    """A real cache directory, a driver on it, and a config file naming it."""

    dir: Path
    run_dir: Path
    config: Path
    driver: Driver

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(extra)
    return env


def cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """Run the CLI (``-c config`` first when given) and return the CompletedProcess."""
    argv = [sys.executable, "-m", "glance_cache_agent.cli"]
    if config is not None:
        argv += ["-c", str(config)]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=clean_env() if env is None else env,
        timeout=60,
        check=False,
    )


def cli_json(cache: Cache, *args: str) -> Any:
    """Run a --json command that must succeed; stdout must be exactly one JSON document."""
    proc = cli(*args, "--json", config=cache.config)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # raises on anything besides one document


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def make_cache(root: Path) -> Cache:
    cache_dir, run_dir = root / "cache", root / "run"
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.configure()
    config = root / "agent.yaml"
    config.write_text(CONFIG.format(cache_dir=cache_dir, run_dir=run_dir))
    return Cache(cache_dir, run_dir, config, driver)
