"""Benchmark the agent: metrics scrape cost at 1k versus 100k images, CLI start-up.

Run by ``make bench`` after ``bench_driver.py``. Not a test: it prints a table
and rewrites the ``<!-- bench:agent -->`` section of ``docs/benchmarks.md``
(the driver's sections are left alone). Everything that has a target is a
ratio of two measurements from the same run, so a noisy shared machine
cancels out.

1. Scrape cost (issue 3, section 8: ratio <= 3 with default settings). For a
   cache of 1,000 and one of 100,000 images (bench_driver's ``build_cache``),
   the registry is wired exactly as the daemon wires it (``AgentMetrics`` +
   ``CacheStateCollector`` through ``build_registry``, default ``metrics``
   settings, ``process_*`` metrics included), the cache state is computed
   once with ``refresh()``, and then scrapes are timed: ``generate_latest``
   on the registry, and ``GET /metrics`` through the real ``MetricsServer``
   on an ephemeral loopback port. A scrape never scans the cache; the
   background refresh does, and its duration (information) grows with N.
2. CLI start-up (DESIGN section 4: a maintenance command on an empty cache
   "well under half a second"): wall time of ``glance-cache-agent --version``,
   ``status`` and ``prune --dry-run`` as subprocesses, median of several runs,
   against ``python -c pass`` in the same run.
3. Glance's lock budget at the large size (issue 9): a Glance-style writer
   (``glance_writer.py``: ``timeout=0``, 50 ms retries for 2 s) bumps hits
   while the agent computes its cache state, through a ``status`` subprocess
   and through the collector's ``refresh()``, and alone as a baseline; its
   worst wait is reported next to the longest read statement the refresh ran
   (``Database.read_observer``, measured without the writer).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_driver import CacheSpec, build_cache, log, print_report, remove_tree  # noqa: E402
from bench_driver import machine_facts as driver_machine_facts  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from glance_cache_agent.config import CacheConfig, Config, MetricsConfig  # noqa: E402
from glance_cache_agent.driver import CacheSettings, Driver  # noqa: E402
from glance_cache_agent.exporter.endpoint import MetricsServer  # noqa: E402
from glance_cache_agent.exporter.metrics import AgentMetrics, CacheStateCollector, build_registry  # noqa: E402
from glance_cache_agent.service.runner import open_driver  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
SECTION = "agent"
SECTION_RE = re.compile(rf"<!-- bench:{SECTION} -->\n.*?<!-- /bench:{SECTION} -->\n", re.DOTALL)

#: Issue 3, section 8: scrape cost at 100k images over scrape cost at 1k.
SCRAPE_RATIO_TARGET = 3.0
#: DESIGN section 4: a maintenance command on an empty cache.
CLI_TARGET_SECONDS = 0.5


# ------------------------------------------------------------------ scrapes


@dataclass
class ScrapeRun:
    """Scrape timings for one cache size."""

    images: int
    build_seconds: float
    refresh_seconds: list[float]
    registry_seconds: list[float]
    http_seconds: list[float]
    series: int
    body_bytes: int
    #: background refreshes a timed scrape started (0 means none disturbed the timing)
    spawned_refreshes: int = 0
    #: how long each read statement of the timed refreshes held the shared lock
    refresh_reads: list[float] = field(default_factory=list)
    #: the Glance-style writer beside the agent (large size only)
    lock: LockRun | None = None


@dataclass
class LockRun:
    """The Glance-style writer's report (``glance_writer.py``) beside each activity."""

    idle: dict[str, float]
    status: dict[str, float]
    refresh: dict[str, float]
    status_runs: int
    refresh_runs: int


WRITER = Path(__file__).resolve().parent / "glance_writer.py"


def beside_writer(
    db_path: str, stop: Path, action: Callable[[], object], runs: int
) -> dict[str, float]:
    """Run ``action`` ``runs`` times while the Glance-style writer writes; its report."""
    stop.unlink(missing_ok=True)
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), db_path, str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        if writer.stdout.readline().strip() != "ready":
            raise RuntimeError("the Glance-style writer did not start")
        for _ in range(runs):
            action()
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    report: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return report


def measure_lock(root: str, collector: CacheStateCollector, runs: int) -> LockRun:
    """The writer's waits: alone for 2 s, beside ``status`` and beside refreshes."""
    driver = Driver(CacheSettings(cache_dir=root))
    stop = Path(root).parent / f"{Path(root).name}.stop"
    config = write_config(f"{root}.yaml", root, cron=False)
    status = [*agent_command(), "-c", config, "status", "--json"]
    env = dict(os.environ)
    env.pop("GLANCE_CACHE_AGENT_CONFIG", None)
    log(f"Glance-style writer: alone, beside {runs} status runs, beside {runs} refreshes")
    try:
        idle = beside_writer(driver.db_path, stop, lambda: time.sleep(2.0), 1)
        during_status = beside_writer(
            driver.db_path,
            stop,
            lambda: subprocess.run(status, check=True, capture_output=True, env=env),
            runs,
        )
        during_refresh = beside_writer(driver.db_path, stop, collector.refresh, runs)
    finally:
        stop.unlink(missing_ok=True)
        os.unlink(config)
    return LockRun(idle, during_status, during_refresh, runs, runs)


def _series_count(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def measure_scrapes(
    images: int,
    seed: int,
    scrapes: int,
    http_scrapes: int,
    refreshes: int,
    tmp_dir: str | None,
    lock_runs: int = 0,
) -> ScrapeRun:
    """Build a cache of ``images`` and time scrapes of a daemon-like registry."""
    root = tempfile.mkdtemp(prefix=f"bench-agent-{images}-", dir=tmp_dir)
    try:
        log(f"building a cache of {images:,} images")
        t = time.perf_counter()
        build_cache(root, CacheSpec(images, seed, time.time()))
        build_seconds = time.perf_counter() - t
        log(f"built in {build_seconds:.1f} s")

        # As daemon.Agent does, with every metrics setting at its default.
        config = Config(cache=CacheConfig(dir=root))
        spawned = 0

        def spawn(target: Callable[[], None]) -> None:
            nonlocal spawned
            spawned += 1
            threading.Thread(target=target, daemon=True).start()

        metrics = AgentMetrics(tasks=[n for n, t in config.tasks.items() if t.enabled])
        collector = CacheStateCollector(
            driver_factory=lambda: observed(open_driver(config)),
            max_size=lambda: config.cache.max_size,
            metrics_config=config.metrics,
            spawn=spawn,
        )
        registry = build_registry(metrics, collector)

        reads: list[float] = []

        def observed(driver: Driver) -> Driver:
            driver.db.read_observer = reads.append
            return driver

        refresh_seconds = []
        for _ in range(refreshes):
            t = time.perf_counter()
            state = collector.refresh()
            refresh_seconds.append(time.perf_counter() - t)
            if state is None or state.cached_images != images:
                raise RuntimeError(f"cache state refresh failed or wrong: {state}")

        # state_max_age (30 s) is far longer than the timed scrapes take, so no
        # scrape below should start a refresh; spawned_refreshes checks that.
        collector.refresh()
        body = generate_latest(registry)  # warm-up
        registry_seconds = []
        for _ in range(scrapes):
            t = time.perf_counter()
            body = generate_latest(registry)
            registry_seconds.append(time.perf_counter() - t)

        http_seconds = []
        server = MetricsServer(
            MetricsConfig(host="127.0.0.1", port=0), registry, lambda: (True, {})
        )
        with server:
            url = f"{server.url}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:  # warm-up
                response.read()
            for _ in range(http_scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as response:
                    http_body = response.read()
                http_seconds.append(time.perf_counter() - t)
        if b"glance_cache_scrape_success 1.0" not in http_body:
            raise RuntimeError("the HTTP scrape did not report scrape_success 1")
        return ScrapeRun(
            images=images,
            build_seconds=build_seconds,
            refresh_seconds=refresh_seconds,
            registry_seconds=registry_seconds,
            http_seconds=http_seconds,
            series=_series_count(body),
            body_bytes=len(body),
            spawned_refreshes=spawned,
            refresh_reads=list(reads),
            lock=measure_lock(root, collector, lock_runs) if lock_runs else None,
        )
    finally:
        log(f"removing the cache of {images:,} images")
        remove_tree(root)


# ------------------------------------------------------------------ CLI


@dataclass
class CliRun:
    """Wall times of one command line, run as a subprocess."""

    label: str
    argv: list[str]
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def agent_command() -> list[str]:
    """The installed console script next to this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "glance-cache-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "glance_cache_agent.cli"]


def write_empty_cache(root: str, cron: bool) -> str:
    """An empty Glance cache under ``root`` and a config for it; returns the config path."""
    cache_dir = os.path.join(root, "cache")
    Driver(CacheSettings(cache_dir=cache_dir)).configure()
    return write_config(os.path.join(root, "cron.yaml" if cron else "config.yaml"), cache_dir, cron)


def write_config(config: str, cache_dir: str, cron: bool) -> str:
    """Write an agent config for ``cache_dir`` at ``config``; return its path."""
    lines = [
        "cache:",
        f"  dir: {cache_dir}",
        "agent:",
        f"  runtime_dir: {os.path.join(os.path.dirname(config), 'run')}",
    ]
    if cron:
        lines += ["tasks:", "  clean: {cron: '1 0 * * *'}", "  prune: {interval: 30m}"]
    Path(config).write_text("\n".join(lines) + "\n")
    return config


def measure_cli(runs: int, tmp_dir: str | None) -> list[CliRun]:
    """Median wall time of each command, interleaved so drifts hit all alike."""
    root = tempfile.mkdtemp(prefix="bench-agent-cli-", dir=tmp_dir)
    try:
        config = write_empty_cache(root, cron=False)
        cron_config = write_empty_cache(root, cron=True)
        agent = agent_command()
        cases = [
            CliRun("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
            CliRun("glance-cache-agent --version", [*agent, "--version"]),
            CliRun("status", [*agent, "-c", config, "status"]),
            CliRun("prune --dry-run", [*agent, "-c", config, "prune", "--dry-run"]),
            CliRun(
                "prune --dry-run, config with a cron task",
                [*agent, "-c", cron_config, "prune", "--dry-run"],
            ),
        ]
        env = dict(os.environ)
        env.pop("GLANCE_CACHE_AGENT_CONFIG", None)
        for case in cases:  # warm-up: bytecode caches, page cache
            subprocess.run(case.argv, check=True, capture_output=True, env=env)
        log(f"CLI start-up: {len(cases)} command lines x {runs} runs")
        for _ in range(runs):
            for case in cases:
                t = time.perf_counter()
                subprocess.run(case.argv, check=True, capture_output=True, env=env)
                case.seconds.append(time.perf_counter() - t)
        return cases
    finally:
        remove_tree(root)


# ------------------------------------------------------------------ report


@dataclass
class Report:
    facts: dict[str, str]
    small: ScrapeRun
    large: ScrapeRun
    cli: list[CliRun]
    total_seconds: float = 0.0


def ms(seconds: float) -> str:
    """Milliseconds below a second, seconds above."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table_rows(r: Report) -> list[list[str]]:
    s, g = r.small, r.large
    rows = [
        ["Metric", f"{s.images:,} images", f"{g.images:,} images", "Ratio", "Target", "Verdict"]
    ]
    reg_ratio = statistics.median(g.registry_seconds) / statistics.median(s.registry_seconds)
    http_ratio = statistics.median(g.http_seconds) / statistics.median(s.http_seconds)
    rows.append(
        [
            f"Scrape, generate_latest (median of {len(s.registry_seconds)})",
            ms(statistics.median(s.registry_seconds)),
            ms(statistics.median(g.registry_seconds)),
            f"{reg_ratio:.2f}x",
            f"<= {SCRAPE_RATIO_TARGET:g}x",
            verdict(reg_ratio <= SCRAPE_RATIO_TARGET),
        ]
    )
    rows.append(
        [
            f"Scrape, best of {len(s.registry_seconds)}",
            ms(min(s.registry_seconds)),
            ms(min(g.registry_seconds)),
            f"{min(g.registry_seconds) / min(s.registry_seconds):.2f}x",
            "info",
            "-",
        ]
    )
    rows.append(
        [
            f"Scrape, GET /metrics over loopback (median of {len(s.http_seconds)})",
            ms(statistics.median(s.http_seconds)),
            ms(statistics.median(g.http_seconds)),
            f"{http_ratio:.2f}x",
            f"<= {SCRAPE_RATIO_TARGET:g}x",
            verdict(http_ratio <= SCRAPE_RATIO_TARGET),
        ]
    )
    rows.append(
        [
            "Series / bytes per scrape",
            f"{s.series} / {s.body_bytes:,} B",
            f"{g.series} / {g.body_bytes:,} B",
            f"{g.body_bytes / s.body_bytes:.2f}x",
            "info",
            "-",
        ]
    )
    rows.append(
        [
            f"Background cache-state refresh (median of {len(s.refresh_seconds)})",
            ms(statistics.median(s.refresh_seconds)),
            ms(statistics.median(g.refresh_seconds)),
            f"{statistics.median(g.refresh_seconds) / statistics.median(s.refresh_seconds):.0f}x",
            "info (grows with N)",
            "-",
        ]
    )
    return rows


def cli_rows(r: Report) -> list[list[str]]:
    base = r.cli[0]
    rows = [
        [
            "Command (empty cache)",
            f"Median of {len(base.seconds)}",
            "Best",
            "vs python -c pass",
            "Target",
            "Verdict",
        ]
    ]
    for case in r.cli:
        maintenance = case.label.startswith(("status", "prune"))
        rows.append(
            [
                case.label,
                ms(case.median),
                ms(min(case.seconds)),
                "1.00x" if case is base else f"{case.median / base.median:.2f}x",
                f"< {CLI_TARGET_SECONDS:g} s" if maintenance else "info",
                verdict(case.median < CLI_TARGET_SECONDS) if maintenance else "-",
            ]
        )
    return rows


def render_text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


#: glance/image_cache/drivers/common.py: Glance's retry budget for one SQL call
GLANCE_BUDGET = 2.0


def lock_rows(r: Report) -> list[list[str]]:
    """Glance-style writer's waits beside each activity, with the read statements."""
    lock, g = r.large.lock, r.large
    if lock is None:
        return []
    rows = [["Glance-style writes", "Worst wait", "p99", "Writes (retried)", "Timeouts",
             "Target", "Verdict"]]  # fmt: skip
    for label, w in (
        ("alone, 2 s (baseline)", lock.idle),
        (f"beside `status` at {g.images:,} images ({lock.status_runs} runs)", lock.status),
        (f"beside a metrics refresh at {g.images:,} images ({lock.refresh_runs} runs)",
         lock.refresh),
    ):  # fmt: skip
        ok = w["timeouts"] == 0 and w["max"] < GLANCE_BUDGET
        rows.append(
            [
                label,
                ms(w["max"]),
                ms(w["p99"]),
                f"{w['writes']:.0f} ({w['retried']:.0f})",
                f"{w['timeouts']:.0f}",
                f"no timeout, worst < {GLANCE_BUDGET:g} s",
                verdict(ok),
            ]
        )
    reads = g.refresh_reads
    rows.append(
        [
            f"Longest read statement of a refresh at {g.images:,} ({len(reads)} statements)",
            ms(max(reads, default=0.0)),
            "-",
            "-",
            "-",
            "info (no writer running)",
            "-",
        ]
    )
    return rows


def notes(r: Report) -> list[str]:
    s, g = r.small, r.large
    out = [
        f"Caches built by bench_driver's `build_cache` in {s.build_seconds:.1f} s and"
        f" {g.build_seconds:.1f} s (not measured). Default `metrics` settings:"
        " `per_image_limit` 50, `state_max_age` 30 s; `process_*` metrics included, as in"
        " the daemon.",
        "A scrape serves the state computed by the last refresh; it never scans. The series"
        " count is the same at both sizes because per-image series are capped at"
        " `per_image_limit` (the rest is `glance_cache_images_omitted`).",
        f"Background refreshes started by the timed scrapes: {s.spawned_refreshes} at"
        f" {s.images:,}, {g.spawned_refreshes} at {g.images:,} (0 means the timing was"
        " undisturbed).",
        f"The refresh (one `scandir` + `lstat` per file, every row read) took"
        f" {ms(min(g.refresh_seconds))} at best at {g.images:,} images; it runs in a"
        " background thread at most once per `state_max_age`, while scrapes keep being"
        " served from the previous state.",
    ]
    cron = next((c for c in r.cli if "cron" in c.label), None)
    plain = next((c for c in r.cli if c.label == "prune --dry-run"), None)
    if cron is not None and plain is not None:
        out.append(
            f"A config with a `cron` schedule costs {ms(cron.median - plain.median)} more per"
            " command (noise: only `run` and `check-config` parse cron expressions with"
            " APScheduler; maintenance commands check their shape only)."
        )
    if g.lock is not None:
        out.append(
            "Glance-style writer: `bench/glance_writer.py` (Glance's sqlite driver: a new"
            " connection with `timeout=0`, `UPDATE ... hits = hits + 1`, commit, each call"
            " retried every 50 ms for 2 s) writes every 10 ms, far above one glance-api's rate;"
            " a write that meets the agent's shared lock waits at least one 50 ms retry. Its"
            " wait is from the first attempt to the commit. Whole-table reads run in keyset"
            " pages (20,000 rows a statement), converted after each statement ends."
        )
    out.append(
        "This venv has `rich` (pulled in by glance, the interop tests' dependency), which"
        " structlog imports when present (60-150 ms). An install of the package alone (no"
        " `rich`) ran `prune --dry-run` on an empty cache in 0.22-0.31 s here."
    )
    return out


def machine_facts() -> dict[str, str]:
    """bench_driver's facts, without its ``repeats`` entry."""
    facts = driver_machine_facts(0)
    del facts["repeats"]
    return facts


def render_section(r: Report) -> str:
    facts = ", ".join(f"{k}: {v}" for k, v in r.facts.items())
    return (
        "## Agent: scrape cost, CLI start-up, Glance's lock budget\n\n"
        "Generated by `bench/bench_agent.py` (run by `make bench` after the driver bench)."
        " Targets: issue 3 section 8 (scrape cost at 100k images <= 3x the cost at 1k, default"
        " settings), DESIGN section 4 (a maintenance command on an empty cache well under"
        " half a second) and DESIGN section 3 (Glance's writers, which retry for 2 s, never"
        " time out beside the agent).\n\n"
        f"{facts}. Total bench time {r.total_seconds:.0f} s.\n\n"
        f"{render_markdown_table(table_rows(r))}\n\n"
        f"{render_markdown_table(cli_rows(r))}\n\n"
        + (f"{render_markdown_table(lock_rows(r))}\n\n" if r.large.lock else "")
        + "".join(f"- {n}\n" for n in notes(r))
    )


def write_markdown(path: Path, report: Report) -> None:
    """Replace this bench's marked section of ``path`` (or append it); keep the rest."""
    section = f"<!-- bench:{SECTION} -->\n{render_section(report)}<!-- /bench:{SECTION} -->\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_RE.search(text):
        text = SECTION_RE.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1_000, help="small cache (default 1000)")
    parser.add_argument("--large", type=int, default=100_000, help="large cache (default 100000)")
    parser.add_argument("--scrapes", type=int, default=200, help="timed registry scrapes per size")
    parser.add_argument("--http-scrapes", type=int, default=50, help="timed HTTP scrapes per size")
    parser.add_argument("--refreshes", type=int, default=3, help="timed state refreshes per size")
    parser.add_argument("--cli-runs", type=int, default=10, help="runs of each command line")
    parser.add_argument(
        "--lock-runs", type=int, default=3, help="status runs and refreshes beside the writer"
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the generated caches")
    parser.add_argument("--tmp-dir", default=None, help="where to build caches (default: $TMPDIR)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown to update")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if min(args.scrapes, args.http_scrapes, args.refreshes, args.cli_runs) < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    facts = machine_facts()
    log("CLI start-up on an empty cache")
    cli = measure_cli(args.cli_runs, args.tmp_dir)
    sizes = []
    for images in (args.small, args.large):
        sizes.append(
            measure_scrapes(
                images,
                args.seed,
                args.scrapes,
                args.http_scrapes,
                args.refreshes,
                args.tmp_dir,
                lock_runs=args.lock_runs if images == args.large else 0,
            )
        )
    facts["load average at end"] = f"{os.getloadavg()[0]:.2f}"
    report = Report(facts, sizes[0], sizes[1], cli)
    report.total_seconds = time.perf_counter() - started

    print_report(
        "glance-cache-agent agent benchmark",
        report.facts,
        [
            render_text_table(table_rows(report)),
            render_text_table(cli_rows(report)),
            *([render_text_table(lock_rows(report))] if report.large.lock else []),
        ],
        notes(report),
        report.total_seconds,
    )
    if not args.no_write:
        write_markdown(args.output, report)
        print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
