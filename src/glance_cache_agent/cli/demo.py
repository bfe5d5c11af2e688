"""Build a demo cache and a config for it (``make run`` without a config).

The cache looks like a busy glance-api node's: a few hundred images with
varied sizes, hits and ages (sparse files, so they cost no disk), over its
``max_size``, with stalled downloads, failed downloads, queued ids, an orphan
file and a phantom row, so that every task has work and every metric a value.
Every image is named by a UUID, as Glance names them; an operator's
``README`` beside them is foreign: counted and listed, never touched.

    python -m glance_cache_agent.cli.demo DIR      # prints the config path
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

from ..driver import CachedRow, CacheSettings, Driver

MIB = 1024**2
GIB = 1024**3

CONFIG_TEMPLATE = """\
# Demo configuration written by glance_cache_agent.cli.demo; see config.example.yaml
# for every key. Short intervals so that something happens while you watch.
cache:
  dir: {cache_dir}
  max_size: {max_size}GiB
  stall_time: 24h
tasks:
  clean: {{interval: 2m, jitter: 5s}}
  prune: {{interval: 1m, jitter: 5s}}
  reconcile: {{interval: 5m, jitter: 5s}}
prune:
  low_watermark: 95%
reconcile:
  orphan_grace: 10m
  orphans: adopt
metrics:
  listen: "127.0.0.1:9742"
  per_image_limit: 20
logging:
  level: info
  format: console
agent:
  runtime_dir: {runtime_dir}
"""


def _sparse(path: Path, size: int, mtime: float) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    os.utime(path, (mtime, mtime))


def build_demo(root: Path, images: int = 300, seed: int = 7) -> Path:
    """Create ``root/cache`` and ``root/config.yaml``; return the config path.

    An existing demo is left as it is (its cache has been maintained since).
    """
    config_path = root / "config.yaml"
    if config_path.exists():
        return config_path
    rng = random.Random(seed)
    now = time.time()
    cache_dir = root / "cache"
    driver = Driver(CacheSettings(cache_dir=str(cache_dir)))
    driver.configure()

    rows: list[CachedRow] = []
    for _ in range(images):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        size = int(rng.lognormvariate(20.5, 1.2)) % (8 * GIB) + MIB
        cached_at = now - rng.uniform(3600, 30 * 86400)
        accessed = rng.uniform(cached_at, now)
        hits = int(rng.paretovariate(1.2)) - 1
        _sparse(cache_dir / image_id, size, cached_at)
        rows.append(CachedRow(image_id, accessed, cached_at, size, hits))
    phantom = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    rows.append(CachedRow(phantom, now - 86400, now - 86400, 123 * MIB, 3))
    driver.store.adopt(rows)

    orphan = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    _sparse(cache_dir / orphan, 2 * GIB, now - 2 * 86400)
    for i in range(3):
        _sparse(cache_dir / "incomplete" / str(uuid.uuid4()), (i + 1) * 100 * MIB, now - 3 * 86400)
    _sparse(cache_dir / "incomplete" / str(uuid.uuid4()), 50 * MIB, now - 60)
    for _ in range(2):
        _sparse(cache_dir / "invalid" / str(uuid.uuid4()), 30 * MIB, now - 3600)
    for i in range(4):
        _sparse(cache_dir / "queue" / str(uuid.uuid4()), 0, now - 600 + i)
    (cache_dir / "README").write_text("Glance image cache of this node; see glance-api.conf.\n")

    runtime_dir = root / "run"
    runtime_dir.mkdir(exist_ok=True)
    total = sum(row.size for row in rows[:-1]) + 2 * GIB
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            cache_dir=cache_dir.resolve(),
            runtime_dir=runtime_dir.resolve(),
            max_size=max(1, int(total * 0.85 / GIB)),  # a little over the limit
        )
    )
    return config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glance_cache_agent.cli.demo")
    parser.add_argument("root", type=Path, help="directory for the demo cache and config")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    print(build_demo(args.root.resolve(), args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
