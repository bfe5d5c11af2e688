"""Interop with Glance 33.0.0's real ``centralized_db`` driver (issue 11 section 4).

Two Glance nodes (two cache dirs, two ``worker_self_reference_url``) share
one real database, PostgreSQL or MariaDB, its schema built by Glance's own
``db sync`` (``glance_db``). Each Glance call runs Glance's driver in a
subprocess (``tests/helpers/glance_central.py``). The agent, as operators
run it (the CLI in a subprocess, ``cache.driver: centralized_db``), maintains
node A only. After every operation Glance's view of node A
(``get_cached_images``, ``get_cache_size``, ``is_cached``, ``get_hit_count``,
``get_queued_images``) and the agent's (``list-cached --json``,
``status --json``, ``list-queued --json``) agree, and node B's rows and files
are byte-identical to what they were before the agent ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.cli import cli
from tests.helpers.glance_central import GlanceNode

pytestmark = pytest.mark.slow

NODE_A = "http://node-a.example:9292"
NODE_B = "http://node-b.example:9292"
DAY = 86400.0


def new_id() -> str:
    return str(uuid.uuid4())


def write_file(path: Path, size: int, age: float = 0.0) -> None:
    """A file of ``size`` bytes, its times ``age`` seconds in the past."""
    path.write_bytes(b"o" * size)
    if age:
        stat = path.stat()
        os.utime(path, (stat.st_atime - age, stat.st_mtime - age))


@dataclass
class TwoNodes:
    """Glance nodes A and B on one database; the agent configured for node A."""

    database: str
    root: Path
    #: the long-lived Glance process of each node, started on first use
    processes: dict[str, GlanceNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.root / "agent.yaml"
        self.config.write_text(
            f"cache:\n  dir: {self.a_dir}\n  driver: centralized_db\n"
            f"  database: '{self.database}'\n  node_url: {NODE_A}\n"
            "clean:\n  settle_time: 0s\n  invalid_grace: 0s\n"
            "prune:\n  batch_pause: 0s\n"
            "reconcile:\n  orphan_grace: 0s\n"
            f"agent:\n  runtime_dir: {self.root / 'run'}\n  lock_timeout: 5s\n"
            "  glance_lock_timeout: 5s\n"
        )

    @property
    def a_dir(self) -> Path:
        return self.root / "node-a"

    @property
    def b_dir(self) -> Path:
        return self.root / "node-b"

    def glance(self, *ops: dict[str, Any], node: str = NODE_A) -> list[Any]:
        """Run ``ops`` through Glance's driver as ``node``; their results."""
        if node not in self.processes:
            cache_dir = self.a_dir if node == NODE_A else self.b_dir
            self.processes[node] = GlanceNode(self.database, cache_dir, node)
        return self.processes[node].call(*ops)

    def close(self) -> None:
        for process in self.processes.values():
            process.close()

    def agent(self, *args: str) -> Any:
        """A ``--json`` agent command that must succeed: its document."""
        proc = cli(*args, "--json", config=self.config)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def assert_agree(self, *ids: str, queued: bool = False) -> dict[str, Any]:
        """Glance's view of node A and the agent's are the same (the queue
        too when ``queued``); Glance's view."""
        view: dict[str, Any] = self.glance({"op": "view", "ids": list(ids)})[0]
        listed = {e["image_id"]: e for e in self.agent("list-cached")}
        status = self.agent("status")
        fields = ("size", "hits", "last_accessed", "last_modified")
        assert {i: tuple(r[f] for f in fields) for i, r in view["images"].items()} == {
            i: tuple(e[f] for f in fields) for i, e in listed.items()
        }
        assert status["cached_images"] == len(view["images"])
        assert status["size_bytes"] == view["cache_size"]
        assert status["hits"] == sum(r["hits"] for r in view["images"].values())
        assert status["phantom_rows"] == status["orphan_files"] == 0
        for image_id in ids:
            present = (self.a_dir / image_id).is_file()
            assert view["is_cached"][image_id] is present
            hits = listed[image_id]["hits"] if present and image_id in listed else 0
            assert view["hit_count"][image_id] == hits
        if queued:
            assert sorted(view["queued"]) == sorted(self.agent("list-queued"))
        return view

    def node_b_state(self) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
        """Node B's rows (every column) and files (path -> sha256 of the content)."""
        engine = create_engine(self.database)
        try:
            with engine.connect() as conn:
                rows = [
                    tuple(r)
                    for r in conn.execute(
                        text(
                            "SELECT c.* FROM cached_images c JOIN node_reference n"
                            " ON n.node_reference_id = c.node_reference_id"
                            " WHERE n.node_reference_url = :url ORDER BY c.id"
                        ),
                        {"url": NODE_B},
                    )
                ]
        finally:
            engine.dispose()
        files = {
            str(path.relative_to(self.b_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.b_dir.rglob("*"))
            if path.is_file()
        }
        return rows, files


@pytest.fixture
def nodes(tmp_path: Path, glance_db: str) -> Iterator[TwoNodes]:
    two = TwoNodes(glance_db, tmp_path)
    try:
        yield two
    finally:
        two.close()


def lru_victims(view: dict[str, Any], target: int) -> list[str]:
    """What an LRU prune to ``target`` evicts, by (last_accessed, image_id)."""
    rows = sorted(view["images"].values(), key=lambda r: (r["last_accessed"], r["image_id"]))
    size = view["cache_size"]
    victims = []
    for row in rows:
        if size <= target:
            break
        victims.append(row["image_id"])
        size -= row["size"]
    return victims


def test_agent_maintains_node_a_glance_agrees_node_b_untouched(nodes: TwoNodes) -> None:
    shared, b_only = new_id(), new_id()
    x1, x2, x3, x4 = (new_id() for _ in range(4))
    write = [{"op": "write", "id": i, "size": n} for i, n in ((shared, 300), (b_only, 200))]
    assert nodes.glance(*write, {"op": "read", "id": shared}, node=NODE_B) == [None, None, 300]
    sizes = {shared: 500, x1: 1000, x2: 2000, x3: 3000, x4: 4000}
    ops = [{"op": "write", "id": i, "size": n} for i, n in sizes.items()]
    reads = [{"op": "read", "id": i} for i in (x2, x4, x4)]
    assert nodes.glance(*ops, *reads) == [None] * 5 + [2000, 4000, 4000]
    before_b = nodes.node_b_state()
    assert len(before_b[0]) == 2
    view = nodes.assert_agree(shared, x1, x2, x4)
    assert view["hit_count"][x4] == 2

    # clean: an invalid file and a stalled download go; Glance's view is unchanged
    invalid, stalled = nodes.a_dir / "invalid" / new_id(), nodes.a_dir / "incomplete" / new_id()
    write_file(invalid, 10, age=DAY)
    write_file(stalled, 10, age=2 * DAY)
    nodes.agent("clean")
    assert not invalid.exists() and not stalled.exists()
    assert nodes.assert_agree(x1)["images"] == view["images"]

    # reconcile: adopt an orphan file, drop the row of a file gone behind Glance's back
    orphan = new_id()
    write_file(nodes.a_dir / orphan, 700, age=DAY)
    (nodes.a_dir / x3).unlink()
    result = nodes.agent("reconcile")
    assert (result["orphans_adopted"], result["phantoms_removed"]) == (1, 1)
    view = nodes.assert_agree(orphan, x3)
    assert view["images"][orphan]["size"] == 700 and view["images"][orphan]["hits"] == 0
    assert x3 not in view["images"] and view["is_cached"][x3] is False

    # Glance reads (and so hits) what the agent adopted
    read, seen = nodes.glance({"op": "read", "id": orphan}, {"op": "view", "ids": [orphan]})
    assert read == 700 and seen["hit_count"][orphan] == 1
    nodes.assert_agree(orphan)

    # delete-cached through the agent: Glance no longer has it
    nodes.agent("delete-cached", x1)
    view = nodes.assert_agree(x1)
    assert x1 not in view["images"] and view["is_cached"][x1] is False

    # queue: each side sees what the other queued
    by_agent, by_glance = new_id(), new_id()
    nodes.agent("queue", by_agent)
    assert nodes.glance({"op": "queue", "id": by_glance}) == [True]
    view = nodes.assert_agree(queued=True)
    assert set(view["queued"]) == {by_agent, by_glance}

    # prune to one byte under the current size: the least recently accessed go
    target = view["cache_size"] - 1
    expected = lru_victims(view, target)
    pruned = nodes.agent("prune", "--max-size", str(target))
    assert pruned["images"] == expected and pruned["size_after"] <= target
    view = nodes.assert_agree(*expected)
    assert orphan in view["images"]  # read last: kept

    # Glance deletes what the agent adopted
    nodes.glance({"op": "delete", "id": orphan})
    view = nodes.assert_agree(orphan)
    assert orphan not in view["images"]

    assert nodes.node_b_state() == before_b


def test_prune_terminates_when_rows_run_out(nodes: TwoNodes) -> None:
    """Untracked files alone over the limit: evicting every row cannot reach it.
    The agent evicts nothing and ends; Glance's prune evicts every row, then
    its LRU lookup returns ``(None, 0)`` (truthy) and it loops forever."""
    tracked, rowless = new_id(), new_id()
    assert nodes.glance({"op": "write", "id": tracked, "size": 1000}) == [None]
    write_file(nodes.a_dir / rowless, 5000)  # e.g. a download whose row insert failed
    pruned = nodes.agent("prune", "--max-size", "2000")
    assert (pruned["images"], pruned["stopped_by"]) == ([], "untracked")
    view = nodes.glance({"op": "view", "ids": [tracked]})[0]
    assert tracked in view["images"] and view["is_cached"][tracked]

    assert nodes.glance({"op": "prune", "max_size": 2000}) == ["looping"]
    view = nodes.glance({"op": "view", "ids": [tracked]})[0]
    assert view["images"] == {} and view["cache_size"] == 5000  # evicted, still over


def test_reconcile_repairs_the_row_of_a_failed_duplicate_insert(nodes: TwoNodes) -> None:
    """Re-caching an image whose file went but whose row stayed: Glance's INSERT
    fails and keeps the stale row (old size); reconcile fixes the size."""
    image = new_id()
    assert nodes.glance({"op": "write", "id": image, "size": 100}) == [None]
    (nodes.a_dir / image).unlink()
    failed, view = nodes.glance(
        {"op": "write", "id": image, "size": 250}, {"op": "view", "ids": [image]}
    )
    assert failed == "PendingRollbackError"  # Glance's bug: its duplicate INSERT is not ignored
    assert view["images"][image]["size"] == 100 and view["cache_size"] == 250
    result = nodes.agent("reconcile")
    assert result["sizes_fixed"] == 1
    assert nodes.assert_agree(image)["images"][image]["size"] == 250
