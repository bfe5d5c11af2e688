"""Benchmark the centralized_db prune on a real PostgreSQL against Glance's own algorithm.

Run with ``make bench`` (``CENTRALIZED_BENCH_ARGS='--images 100000'`` for a
bigger cache). Not a test: it prints a table and rewrites the
``<!-- bench:centralized -->`` section of ``docs/benchmarks.md`` (the other
sections are left alone). It starts its own throwaway PostgreSQL with
``tests/helpers/dbservers.py`` (Glance's schema by Glance's ``db sync``) and
stops it at the end; without PostgreSQL or Glance installed it says so and
exits 0 without writing.

Per round, two identical copies (N sparse image files and N rows of one node in
``cached_images``, plus the same rows of a second node, as a shared database has)
are pruned of the 10 % least recently used:

1. by the agent: ``run_prune`` through ``open_centralized_driver``, whose
   ``observer`` reports each write transaction's duration (p99, max);
2. by a baseline that follows ``glance.image_cache.ImageCache.prune`` over
   Glance's ``centralized_db`` driver line by line: the size scan, then per
   victim one LRU query (``get_least_recently_accessed``: a join on
   ``node_reference``, ``ORDER BY last_accessed``, first row, then a stat of
   the file), an unlink and one ``DELETE`` (``delete_cached_image``), each
   statement in its own transaction as Glance's sessions run them.

Rounds alternate which copy goes first; the ratio (agent / Glance) is the
median over rounds, so a noisy shared machine cancels out.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.helpers: the throwaway database servers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_driver import percentile  # noqa: E402

from glance_cache_agent.driver import CachedRow, CacheSettings  # noqa: E402
from glance_cache_agent.driver.centralized import (  # noqa: E402
    CentralizedDriver,
    open_centralized_driver,
)
from glance_cache_agent.maintenance import PrunePolicy, run_prune  # noqa: E402
from tests.helpers.dbservers import (  # noqa: E402
    DbServer,
    new_postgres_server,
    register_node,
)

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
SECTION = "centralized"
SECTION_RE = re.compile(rf"<!-- bench:{SECTION} -->\n.*?<!-- /bench:{SECTION} -->\n", re.DOTALL)

NODE = "http://bench-node-a.example:9292"
#: another glance-api's rows in the same table: the queries must skip them
OTHER_NODE = "http://bench-node-b.example:9292"
MIB = 1024**2
MIN_IMAGE_SIZE = 16 * MIB
MAX_IMAGE_SIZE = 8 * 1024 * MIB
ACCESS_SPREAD = 30 * 86400.0
PRUNE_FRACTION = 0.10
#: DESIGN section 3: no write transaction of ours may hold Glance's writers back longer.
TXN_P99_TARGET = 0.050

#: glance.db.sqlalchemy.api.get_least_recently_accessed, as its ORM query renders
GLANCE_LRU = text(
    "SELECT cached_images.image_id FROM cached_images"
    " LEFT OUTER JOIN node_reference"
    " ON node_reference.node_reference_id = cached_images.node_reference_id"
    " WHERE node_reference.node_reference_url = :node"
    " ORDER BY cached_images.last_accessed LIMIT 1"
)
#: glance.db.sqlalchemy.api.delete_cached_image
GLANCE_DELETE = text(
    "DELETE FROM cached_images WHERE cached_images.image_id = :image_id"
    " AND cached_images.node_reference_id = (SELECT node_reference.node_reference_id"
    " FROM node_reference WHERE node_reference.node_reference_url = :node)"
)


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[bench-centralized] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- building


def generate_rows(images: int, seed: int, now: float) -> list[CachedRow]:
    """The same ``images`` rows for the same seed: UUIDs, sizes, distinct access times."""
    rng = random.Random(seed)
    rows = []
    for _ in range(images):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        accessed = now - rng.uniform(0.0, ACCESS_SPREAD)
        size = rng.randint(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        rows.append(CachedRow(image_id, accessed, accessed - 3600.0, size, rng.randint(0, 50)))
    return rows


def create_sparse_files(base_dir: str, rows: Sequence[CachedRow]) -> None:
    """Each row's image file, sparse (``ftruncate``): sizes without data."""
    for row in rows:
        fd = os.open(os.path.join(base_dir, row.image_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.ftruncate(fd, row.size)
        finally:
            os.close(fd)


def open_node(
    url: str, root: str, node_url: str = NODE, txns: list[float] | None = None
) -> CentralizedDriver:
    """``node_url``'s centralized driver over ``root`` (its directories created)."""
    observer = None if txns is None else txns.append
    driver = open_centralized_driver(
        CacheSettings(cache_dir=root), url, node_url, observer=observer
    )
    assert isinstance(driver, CentralizedDriver)
    driver.set_paths()
    return driver


def build_copy(url: str, root: str, rows: Sequence[CachedRow]) -> int:
    """Both nodes registered with the same rows, this node's files; the max_size to prune to.

    The rows go in through the store's own ``adopt`` (batched inserts), before any timing.
    """
    for node_url in (OTHER_NODE, NODE):
        register_node(url, node_url)
        driver = open_node(url, root, node_url)
        try:
            driver.store.adopt(rows)
            assert os.path.samefile(driver.base_dir, root)
        finally:
            driver.close()
    create_sparse_files(root, rows)
    victims = int(len(rows) * PRUNE_FRACTION)
    oldest = sorted(rows, key=lambda row: row.last_accessed)[:victims]
    return sum(row.size for row in rows) - sum(row.size for row in oldest)


def count_rows(url: str) -> int:
    """This node's rows left."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT COUNT(*) FROM cached_images JOIN node_reference USING"
                        " (node_reference_id) WHERE node_reference_url = :node"
                    ),
                    {"node": NODE},
                ).scalar_one()
            )
    finally:
        engine.dispose()


# ------------------------------------------------------------------ the runs


@dataclass
class AgentRun:
    seconds: float
    evicted: int
    txns: list[float]


def time_agent(url: str, root: str, max_size: int) -> AgentRun:
    """``run_prune`` on the centralized driver, every write transaction observed."""
    txns: list[float] = []
    driver = open_node(url, root, txns=txns)
    try:
        started = time.perf_counter()
        result = run_prune(driver, PrunePolicy(max_size=max_size, batch_pause=0.0))
        seconds = time.perf_counter() - started
    finally:
        driver.close()
    return AgentRun(seconds, result.pruned_images, txns)


def glance_size(base_dir: str) -> int:
    """``Driver.get_cache_size``: a stat of every regular file of the base directory."""
    total = 0
    for name in os.listdir(base_dir):
        path = os.path.join(base_dir, name)
        if os.path.isfile(path):
            total += os.stat(path).st_size
    return total


def glance_lru(engine: Engine, base_dir: str) -> tuple[str, int] | None:
    """``get_least_recently_accessed``: one query in its own session, then a stat."""
    with engine.begin() as conn:
        image_id = conn.execute(GLANCE_LRU, {"node": NODE}).scalar()
    if image_id is None:
        return None
    try:
        size = os.stat(os.path.join(base_dir, image_id)).st_size
    except OSError:
        size = 0
    return image_id, size


def time_glance(url: str, root: str, max_size: int) -> tuple[float, int]:
    """Glance's ``ImageCache.prune`` over its centralized_db driver: seconds, evictions."""
    engine = create_engine(url, pool_pre_ping=True)
    base_dir = root  # build_copy checked it is the agent's base directory
    try:
        started = time.perf_counter()
        current = glance_size(base_dir)
        evicted = 0
        entry = glance_lru(engine, base_dir)
        while entry and current > max_size:
            image_id, size = entry
            path = os.path.join(base_dir, image_id)
            if os.path.exists(path):
                os.unlink(path)
            with engine.begin() as conn:
                conn.execute(GLANCE_DELETE, {"image_id": image_id, "node": NODE})
            current -= size
            evicted += 1
            entry = glance_lru(engine, base_dir)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return seconds, evicted


# ------------------------------------------------------------------ rounds


@dataclass
class Round:
    agent: AgentRun
    glance_seconds: float
    glance_evicted: int

    @property
    def ratio(self) -> float:
        return self.agent.seconds / self.glance_seconds


@dataclass
class Report:
    images: int
    victims: int
    rounds: list[Round]
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def txns(self) -> list[float]:
        return [t for r in self.rounds for t in r.agent.txns]


def one_round(server: DbServer, work: str, rows: Sequence[CachedRow], index: int) -> Round:
    """Two fresh copies (a database clone and a directory each); both prunes; clean up."""
    names = {kind: f"bench_{kind}_{index}_{uuid.uuid4().hex[:8]}" for kind in ("agent", "glance")}
    urls = {kind: server.clone_template(name) for kind, name in names.items()}
    roots = {kind: os.path.join(work, f"{kind}-{index}") for kind in names}
    try:
        max_size = 0
        for kind in names:
            max_size = build_copy(urls[kind], roots[kind], rows)
        order = ("agent", "glance") if index % 2 == 0 else ("glance", "agent")
        agent: AgentRun | None = None
        glance: tuple[float, int] = (0.0, 0)
        for kind in order:
            log(f"round {index + 1}: {kind} prune")
            if kind == "agent":
                agent = time_agent(urls[kind], roots[kind], max_size)
            else:
                glance = time_glance(urls[kind], roots[kind], max_size)
        assert agent is not None
        left = {kind: count_rows(urls[kind]) for kind in names}
        if left["agent"] != left["glance"]:
            raise SystemExit(f"the two prunes left different rows: {left}")
        return Round(agent, *glance)
    finally:
        for kind, name in names.items():
            server.drop_database(name)
            shutil.rmtree(roots[kind], ignore_errors=True)


# ------------------------------------------------------------------ output


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table_rows(r: Report) -> list[list[str]]:
    ratio = statistics.median(x.ratio for x in r.rounds)
    p99 = percentile(r.txns, 99)
    agent = statistics.median(x.agent.seconds for x in r.rounds)
    glance = statistics.median(x.glance_seconds for x in r.rounds)
    return [
        ["measure", "value", "target"],
        [f"prune {r.victims} of {r.images} rows: agent (median)", fmt_seconds(agent), ""],
        ["same prune, Glance's algorithm (median)", fmt_seconds(glance), ""],
        ["ratio agent / Glance (median of rounds)", f"{ratio:.3f}x", "< 1 (information)"],
        [
            f"agent write transaction p99 ({len(r.txns)} transactions)",
            fmt_seconds(p99),
            f"<= {fmt_seconds(TXN_P99_TARGET)}: {'met' if p99 <= TXN_P99_TARGET else 'MISSED'}",
        ],
        ["agent write transaction max", fmt_seconds(max(r.txns, default=0.0)), ""],
    ]


def render_markdown(r: Report) -> str:
    rows = table_rows(r)
    lines = [f"## centralized_db on PostgreSQL, N = {r.images:,}", ""]
    lines += [
        "`bench/bench_centralized.py` (`make bench`): a throwaway PostgreSQL with Glance's",
        "db-synced schema; this node's N rows plus the same N of a second node. The agent's",
        "`run_prune` versus Glance's centralized algorithm (one LRU query and one DELETE per",
        "victim), rounds alternating which runs first. Both leave the same rows.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
        "",
        "Per round (agent / Glance): "
        + ", ".join(
            f"{fmt_seconds(x.agent.seconds)} / {fmt_seconds(x.glance_seconds)}" for x in r.rounds
        ),
        "",
        "Measured on: " + ", ".join(f"{k} {v}" for k, v in r.facts.items()),
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, report: Report) -> None:
    """Replace this bench's marked section of ``path`` (or append it); keep the rest."""
    section = f"<!-- bench:{SECTION} -->\n{render_markdown(report)}<!-- /bench:{SECTION} -->\n"
    text_ = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_RE.search(text_):
        text_ = SECTION_RE.sub(lambda _m: section, text_, count=1)
    else:
        text_ = text_.rstrip("\n") + "\n\n" + section
    path.write_text(text_)


def facts(server_version: str) -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "load": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "postgresql": server_version,
    }


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def start_postgres() -> DbServer | str:
    """``new_postgres_server()``, or why there is none (its pytest skip, or no Glance)."""
    if importlib.util.find_spec("glance") is None:
        return "Glance is not installed (the 'interop' extra builds the schema)"
    try:
        return new_postgres_server()
    except pytest.skip.Exception as skipped:
        return str(skipped)


def server_version(server: DbServer) -> str:
    """The server's version, for the record."""
    with server.admin().connect() as conn:
        return str(conn.execute(text("SHOW server_version")).scalar_one())


def rounds(server: DbServer, args: argparse.Namespace) -> Iterator[Round]:
    """Each round on fresh copies of the same cache."""
    rows = generate_rows(args.images, args.seed, time.time())
    with tempfile.TemporaryDirectory(prefix="gca-bench-central-") as work:
        for index in range(args.rounds):
            yield one_round(server, work, rows, index)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = start_postgres()
    if isinstance(server, str):
        log(f"skipped: {server}")
        return 0
    try:
        report = Report(args.images, int(args.images * PRUNE_FRACTION), [])
        report.facts = facts(server_version(server))
        report.rounds = list(rounds(server, args))
    finally:
        server.stop()
    for row in table_rows(report):
        print(" | ".join(row))
    if not args.no_write:
        write_markdown(args.output, report)
        log(f"wrote the '{SECTION}' section of {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
