"""``nodes [IMAGE_ID]``: the whole fleet's caches, read from Glance's shared database.

Answers, from any node, "which nodes cache this image, and how much of each
node's cache is dead weight": with ``centralized_db`` every glance-api
node's rows sit in one database, so one query per question suffices. It
only reads (a SELECT-only database user is enough), needs no cache
directory and no ``node_reference`` row of its own. With the ``sqlite``
driver each node's rows live in its own ``cache.db``: exit 78.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...config import ConfigError, age, iec
from ...errors import ExitCode
from ...redact import mask_url
from ..errors import UsageError
from ..output import emit
from ..render import table

if TYPE_CHECKING:
    from ...config import Config
    from ...driver.centralized_fleet import NodeCaching, NodeSummary

__all__ = ["cmd_nodes", "render_image_nodes", "render_nodes"]


def cmd_nodes(args: argparse.Namespace, config: Config) -> int:
    """Every node's cache (images, bytes, dead weight, last access), or the nodes
    caching one image; never writes."""
    from ...driver.centralized import open_database
    from ...driver.centralized_fleet import DeadImages, fleet_nodes, nodes_caching
    from ...driver.ids import is_uuid

    image_id: str | None = args.image_id
    if image_id is not None and not is_uuid(image_id):
        raise UsageError(f"image id {image_id!r} is not a UUID (Glance issues only UUIDs)")
    database = _database(config)
    db = open_database(database)
    try:
        dead = DeadImages(db)
        if image_id is None:
            nodes = fleet_nodes(db, dead)
            emit(args, nodes_document(nodes, dead.readable), lambda: render_nodes(nodes))
        else:
            caching = nodes_caching(db, image_id)
            is_dead = dead.lookup([image_id])
            gone = None if is_dead is None else image_id in is_dead
            document = image_document(image_id, gone, caching)
            emit(args, document, lambda: render_image_nodes(image_id, gone, caching))
    finally:
        db.engine.dispose()
    return ExitCode.OK


def _database(config: Config) -> str:
    """The database URL of a centralized_db config; exit 78 for any other driver."""
    if config.cache.driver != "centralized_db" or config.cache.database is None:
        raise ConfigError(
            f"nodes: cache.driver is {config.cache.driver!r}; only centralized_db keeps every"
            " node's rows in one database (set cache.driver: centralized_db and cache.database,"
            " or cache.glance_config)"
        )
    return config.cache.database


def nodes_document(nodes: Sequence[NodeSummary], images_readable: bool) -> dict[str, Any]:
    """``nodes --json``: ``images_readable`` and one entry per ``node_reference`` row."""
    return {
        "images_readable": images_readable,
        "nodes": [
            {
                "node_url": mask_url(n.node_url),
                "node_reference_id": n.node_reference_id,
                "cached_images": n.cached_images,
                "cached_bytes": n.cached_bytes,
                "dead_images": n.dead_images,
                "dead_bytes": n.dead_bytes,
                "last_accessed": n.last_accessed,
            }
            for n in nodes
        ],
    }


def image_document(
    image_id: str, dead: bool | None, nodes: Sequence[NodeCaching]
) -> dict[str, Any]:
    """``nodes --json IMAGE_ID``: the image, whether Glance deleted it, the nodes caching it."""
    return {
        "image_id": image_id,
        "dead": dead,
        "nodes": [
            {
                "node_url": mask_url(n.node_url),
                "node_reference_id": n.node_reference_id,
                "size": n.size,
                "hits": n.hits,
                "last_accessed": n.last_accessed,
                "last_modified": n.last_modified,
            }
            for n in nodes
        ],
    }


def _ago(moment: float | None, now: float) -> str:
    return "-" if moment is None else age(max(0.0, now - moment)) + " ago"


def _dead(n: NodeSummary) -> tuple[str, str]:
    if n.dead_images is None or n.dead_bytes is None:
        return "?", "?"
    return str(n.dead_images), iec(n.dead_bytes)


def render_nodes(nodes: Sequence[NodeSummary], now: float | None = None) -> str:
    """A table of every node's cache; ``?`` where Glance's ``images`` is unreadable."""
    if not nodes:
        return "no node_reference rows: no glance-api node has registered"
    now = time.time() if now is None else now
    rows = [
        [mask_url(n.node_url), str(n.cached_images), iec(n.cached_bytes), *_dead(n)]
        + [_ago(n.last_accessed, now)]
        for n in nodes
    ]
    head = ["NODE", "IMAGES", "BYTES", "DEAD", "DEAD BYTES", "LAST ACCESSED"]
    return table(head, rows, right=(1, 2, 3, 4))


def render_image_nodes(
    image_id: str, dead: bool | None, nodes: Sequence[NodeCaching], now: float | None = None
) -> str:
    """The nodes caching ``image_id``, and whether Glance deleted it."""
    state = {None: "unknown", True: "deleted in Glance", False: "active"}[dead]
    if not nodes:
        return f"image {image_id} ({state}) is cached on no node"
    now = time.time() if now is None else now
    rows = [
        [mask_url(n.node_url), iec(n.size), str(n.hits), _ago(n.last_accessed, now)] for n in nodes
    ]
    head = ["NODE", "SIZE", "HITS", "LAST ACCESSED"]
    return f"image {image_id} ({state})\n" + table(head, rows, right=(1, 2))
