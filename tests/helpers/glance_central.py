"""Drive OpenStack Glance's *real* ``centralized_db`` cache driver, one node per subprocess.

Glance keeps its configuration in the process-global ``cfg.CONF`` and its
database engine in a process-global oslo.db facade: two nodes (two cache
dirs, two ``worker_self_reference_url``) cannot share one process. So each
node is a long-lived child ``python -m tests.helpers.glance_central``
(:class:`GlanceNode`): Glance is imported once, then each call is one JSON
line of operations in, one JSON line of results out. The child points CONF at
one node (cache dir, ``image_cache_driver = centralized_db``, ``[database]
connection``, the node URL) and builds
``glance.image_cache.drivers.centralized_db.Driver`` exactly as glance-api
does (``configure()`` registers the node, duplicate ignored). The child runs
with ``TZ=UTC``: Glance converts its naive UTC timestamps to epoch as if they
were local time (a Glance bug the agent does not share), so only under UTC
are its epochs the true ones.

Operations (``{"op": NAME, ...}``):

* ``view``: Glance's whole view of the node: ``get_cached_images()`` (by
  image id), ``get_cache_size()``, ``get_queued_images()``, and for ``ids``:
  ``is_cached`` and ``get_hit_count``;
* ``write`` ``id`` ``size``: cache an image through ``open_for_write`` (what a
  finished download does: rename into place, insert the row); the result is
  None, or the name of the exception Glance raised;
* ``read`` ``id``: ``open_for_read`` the file to its end (counts a hit);
  the result is the bytes read;
* ``delete`` ``id``: ``delete_cached_image``; ``queue`` ``id``: ``queue_image``;
* ``prune`` ``max_size``: ``ImageCache().prune()``, Glance's own pruner; the
  result is its ``(files, bytes)``, or ``"looping"`` once it is caught in its
  endless loop (see ``_prune``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

#: a hang guard for one Glance subprocess, not a timing expectation
GLANCE_TIMEOUT = 60.0
#: LRU lookups finding no row in a row (nothing changed between them) that
#: prove Glance's prune is in its endless loop
LOOP_PROOF = 3


def _request(
    database: str,
    cache_dir: str | os.PathLike[str],
    node_url: str,
    max_size: int,
) -> dict[str, Any]:
    """The JSON line a child reads first: which node it is."""
    return {
        "database": database,
        "cache_dir": os.fspath(cache_dir),
        "node_url": node_url,
        "max_size": max_size,
    }


def _child_env() -> dict[str, str]:
    """The child's environment: UTC, this checkout importable, no agent settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLANCE_CACHE_AGENT")}
    env["TZ"] = "UTC"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class GlanceNode:
    """One Glance node in a long-lived child: Glance is imported and
    configured once, then each :meth:`call` sends one JSON line of
    operations and reads one JSON line of results back."""

    def __init__(
        self,
        database: str,
        cache_dir: str | os.PathLike[str],
        node_url: str,
        *,
        max_size: int = 10 * 1024**3,
    ) -> None:
        # open as long as the child lives; closed in close()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.glance_central"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=_child_env(),
        )
        self._send(_request(database, cache_dir, node_url, max_size))

    def _send(self, document: Any) -> Any:
        """Write one JSON line, read the reply's results (fail with the child's stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(document) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], GLANCE_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stderr.seek(0)
            raise AssertionError(self.stderr.read().decode(errors="replace")[-3000:])
        reply = json.loads(line)
        assert "error" not in reply, reply.get("error")
        return reply["results"]

    def call(self, *ops: dict[str, Any]) -> list[Any]:
        """Run ``ops`` in this node's Glance process; their results."""
        results: list[Any] = self._send(list(ops))
        return results

    def close(self) -> None:
        """End the child (EOF on its stdin) and wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=GLANCE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


# ------------------------------------------------------------------ the child


def _load_glance(request: dict[str, Any]) -> tuple[Any, Any]:
    """Import Glance, point CONF at the request's node: (driver module, image_cache)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import glance.db.sqlalchemy.api  # noqa: F401  (registers [database] options)
        import glance.image_cache as image_cache
        from glance.common import config  # noqa: F401  (worker_self_reference_url)
        from glance.image_cache.drivers import centralized_db
        from oslo_config import cfg
        from oslo_db import options as db_options
    logging.getLogger().handlers.clear()
    logging.getLogger("glance").setLevel(logging.CRITICAL + 1)
    conf = cfg.CONF
    db_options.set_defaults(conf)
    conf([], project="glance", default_config_files=[])
    conf.set_override("connection", request["database"], group="database")
    conf.set_override("image_cache_dir", request["cache_dir"])
    conf.set_override("image_cache_driver", "centralized_db")
    conf.set_override("image_cache_max_size", request["max_size"])
    conf.set_override("worker_self_reference_url", request["node_url"])
    conf.set_override("lock_path", request["cache_dir"], group="oslo_concurrency")
    return centralized_db, image_cache


def _view(driver: Any, ids: list[str]) -> dict[str, Any]:
    """What Glance's driver says about the node (the ``view`` operation)."""
    images = {row["image_id"]: row for row in driver.get_cached_images()}
    return {
        "images": images,
        "cache_size": driver.get_cache_size(),
        "is_cached": {i: driver.is_cached(i) for i in ids},
        "hit_count": {i: driver.get_hit_count(i) for i in ids},
        "queued": driver.get_queued_images(),
    }


def _write(driver: Any, image_id: str, size: int) -> str | None:
    """Cache ``size`` bytes as ``image_id``; None, or the name of what Glance raised."""
    try:
        with driver.open_for_write(image_id) as f:
            f.write(b"g" * size)
    except Exception as exc:  # noqa: BLE001 - what Glance raises is the result
        return type(exc).__name__
    return None


class _Looping(Exception):
    """Glance's prune reached its fixed point: it would loop forever."""


def _prune(image_cache: Any, max_size: int) -> Any:
    """``ImageCache().prune()`` down to ``max_size``; ``"looping"`` if it never ends.

    When the LRU lookup finds no row while the directory is still over the
    limit, it returns ``(None, 0)``: the loop deletes image ``None`` (no row,
    no file), subtracts 0 and asks again, with nothing changed: the same
    state forever. Seen ``LOOP_PROOF`` times in a row, the call is stopped.
    """
    image_cache.CONF.set_override("image_cache_max_size", max_size)
    pruner = image_cache.ImageCache()
    driver_class = type(pruner.driver)
    lookup = driver_class.get_least_recently_accessed
    empty = 0

    def counted(driver: Any) -> Any:
        nonlocal empty
        entry = lookup(driver)
        empty = empty + 1 if entry[0] is None else 0
        if empty == LOOP_PROOF:
            raise _Looping
        return entry

    driver_class.get_least_recently_accessed = counted
    try:
        return pruner.prune()
    except _Looping:
        return "looping"
    finally:
        driver_class.get_least_recently_accessed = lookup


def _run(op: dict[str, Any], driver: Any, image_cache: Any) -> Any:
    """One operation (see the module docstring); its JSON-able result."""
    name = op["op"]
    if name == "view":
        return _view(driver, op.get("ids", []))
    if name == "write":
        return _write(driver, op["id"], op["size"])
    if name == "read":
        with driver.open_for_read(op["id"]) as f:
            return len(f.read())
    if name == "delete":
        driver.delete_cached_image(op["id"])
        return None
    if name == "queue":
        return driver.queue_image(op["id"])
    if name == "prune":
        return _prune(image_cache, op["max_size"])
    raise ValueError(f"unknown operation {name!r}")


def _serve(driver: Any, image_cache: Any) -> None:
    """Answer one JSON line of operations per JSON line read, until EOF."""
    print(json.dumps({"results": []}), flush=True)
    for line in sys.stdin:
        reply: dict[str, Any]
        try:
            reply = {"results": [_run(op, driver, image_cache) for op in json.loads(line)]}
        except Exception:  # noqa: BLE001 - reported to the test, which fails
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


def main() -> None:
    request = json.loads(sys.stdin.readline())
    centralized_db, image_cache = _load_glance(request)
    driver = centralized_db.Driver()
    driver.configure()
    _serve(driver, image_cache)


if __name__ == "__main__":
    main()
