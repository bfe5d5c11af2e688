"""Numbers that stay true across restarts (issue 9, point 5).

* ``glance_cache_hits_total`` is a real counter: 0 when the agent starts,
  then the hits seen since, whoever evicts rows; it never drops.
* Runs made by other processes (by hand, by ``glance-cache-agent-run@``
  and its timer) reach the daemon's ``task_*`` series through the
  task-runs file in the runtime directory.
* A prune victim re-cached between planning and unlinking gets its row's
  ``last_accessed`` refreshed, so the fresh copy is not the next victim.

Real parts: a real cache, the daemon as a real subprocess scraped over HTTP,
the CLI as a real subprocess, another uid via ``setpriv``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from glance_cache_agent.config import MetricsConfig
from glance_cache_agent.driver import Driver
from glance_cache_agent.exporter.cache_state import CacheState, hits_increase
from glance_cache_agent.exporter.metrics import AgentMetrics, CacheStateCollector
from glance_cache_agent.maintenance import PrunePolicy, take_snapshot
from glance_cache_agent.maintenance.prune import execute_prune, plan_prune
from glance_cache_agent.service.run_records import (
    FILE_NAME,
    RECORDS_KEPT,
    RunLedger,
    RunRecord,
    append_run,
    read_journal,
)
from tests.helpers.agent_process import Agent, Daemon, Samples
from tests.helpers.cache import cache_image, read_image, set_row

NOBODY = 65534


def image_id(n: int) -> str:
    return str(uuid.UUID(int=n))


# ======================================================= hits_increase


def test_hits_increase_starts_at_zero_and_counts_what_each_image_gained() -> None:
    assert hits_increase(None, {image_id(1): 40}) == 0  # hits from before the start
    assert hits_increase({image_id(1): 40}, {image_id(1): 43}) == 3
    assert hits_increase({image_id(1): 40, image_id(2): 1}, {image_id(1): 40, image_id(2): 1}) == 0


def test_hits_increase_new_recreated_and_evicted_images() -> None:
    before = {image_id(1): 40, image_id(2): 7, image_id(3): 5}
    now = {
        image_id(1): 41,  # +1
        # image 2 evicted: adds nothing, takes nothing away
        image_id(3): 2,  # evicted and cached again since: its 2 hits are new
        image_id(4): 6,  # cached since the last look: all 6 are new
    }
    assert hits_increase(before, now) == 1 + 2 + 6


# One step of the world between two refreshes: (image, action, hits).
Step = tuple[int, str, int]
steps = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["hit", "evict", "cache"]), st.integers(1, 4)),
    max_size=40,
)


def _apply(rows: dict[str, int], step: Step) -> int:
    """Apply one step to the rows; return the hits it took."""
    n, action, hits = step
    key = image_id(n)
    if action == "hit" and key in rows:
        rows[key] += hits
        return hits
    if action == "evict":
        rows.pop(key, None)
    elif action == "cache" and key not in rows:
        rows[key] = 0
    return 0


@settings(max_examples=200, deadline=None)
@given(initial=st.dictionaries(st.integers(0, 5), st.integers(0, 50)), script=steps)
def test_hits_total_is_exact_when_refreshed_after_every_change(
    initial: dict[int, int], script: list[Step]
) -> None:
    rows = {image_id(n): hits for n, hits in initial.items()}
    seen: dict[str, int] | None = None
    total = hits_increase(seen, rows)
    seen, taken = dict(rows), 0
    for step in script:
        taken += _apply(rows, step)
        total += hits_increase(seen, rows)
        seen = dict(rows)
        assert total == taken


@settings(max_examples=200, deadline=None)
@given(
    initial=st.dictionaries(st.integers(0, 5), st.integers(0, 50)),
    script=st.lists(steps, max_size=8),
)
def test_hits_total_never_drops_nor_overcounts_between_sparse_refreshes(
    initial: dict[int, int], script: list[list[Step]]
) -> None:
    rows = {image_id(n): hits for n, hits in initial.items()}
    seen, total, taken = dict(rows), 0, 0
    for batch in script:  # several changes between two refreshes
        taken += sum(_apply(rows, step) for step in batch)
        increase = hits_increase(seen, rows)
        seen = dict(rows)
        assert increase >= 0
        total += increase
        assert total <= taken


# ================================================= the collector's counter


def _hits_total(collector: CacheStateCollector) -> float:
    registry = CollectorRegistry()
    registry.register(collector)
    value = registry.get_sample_value("glance_cache_hits_total")
    assert value is not None
    return value


def test_collector_counts_from_its_first_refresh_and_across_a_failed_one(driver: Driver) -> None:
    for n in (1, 2):
        cache_image(driver, image_id(n), 100)
        set_row(driver, image_id(n), hits=20)
    broken = False

    def factory() -> Driver:
        if broken:
            raise OSError(5, "Input/output error")
        return driver

    collector = CacheStateCollector(
        factory, 10_000, MetricsConfig(state_max_age=3600), spawn=lambda _target: None
    )
    assert collector.refresh() is not None
    assert _hits_total(collector) == 0  # the 40 hits in the rows predate the collector

    read_image(driver, image_id(1))
    broken = True
    assert collector.refresh() is None  # nothing counted, nothing lost
    read_image(driver, image_id(2))
    broken = False
    state = collector.refresh()
    assert isinstance(state, CacheState) and state.hits == 42
    assert _hits_total(collector) == 2


# ===================================================== the re-cached victim


def test_a_victim_recached_between_plan_and_unlink_gets_its_row_refreshed(
    driver: Driver,
) -> None:
    """Glance re-caches the image after prune planned its eviction: Glance's
    commit keeps the old row (its INSERT fails), so without a refresh the fresh
    copy would be the next run's first victim."""
    now = 1_900_000_000.0
    old, newer = image_id(1), image_id(2)
    for index, key in enumerate((old, newer)):
        cache_image(driver, key, 1000)
        set_row(driver, key, last_accessed=now - 3600 + index, hits=3)
    policy = PrunePolicy(max_size=1500, batch_pause=0)
    plan = plan_prune(take_snapshot(driver, now), policy, now)
    assert [v.image_id for v in plan.victims] == [old]

    # between plan and unlink: a new file under the victim's name, row untouched
    path = Path(driver.get_image_filepath(old))
    fresh = path.with_name(".fresh")
    fresh.write_bytes(b"y" * 1000)
    os.rename(fresh, path)

    with freeze_time(datetime.fromtimestamp(now + 10, UTC)):
        result = execute_prune(driver, plan, policy)
    assert result.pruned_images == 0 and result.skipped_images == [old]
    assert path.read_bytes() == b"y" * 1000
    rows = driver.store.rows_by_id([old, newer])
    assert rows[old].last_accessed == now + 10
    assert rows[old].hits == 3 and rows[newer].last_accessed == now - 3600 + 1

    # the next run evicts the other image, not the fresh copy
    replan = plan_prune(take_snapshot(driver, now + 20), policy, now + 20)
    assert [v.image_id for v in replan.victims] == [newer]


def test_touch_rows_never_moves_last_accessed_back(driver: Driver) -> None:
    cache_image(driver, image_id(1), 10)
    set_row(driver, image_id(1), last_accessed=2_000_000_000.0)
    assert driver.store.touch_rows([image_id(1), image_id(9)], 1_900_000_000.0) == 0
    assert driver.store.rows_by_id([image_id(1)])[image_id(1)].last_accessed == 2_000_000_000.0


# ========================================================== the runs file


def test_ledger_counts_each_other_process_run_once_and_never_its_own(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    os.mkdir(run_dir)
    append_run(run_dir, "prune", True, 1.0, finished_at=100.0)  # before the daemon started
    ledger = RunLedger(run_dir)
    journal = ledger.start()
    assert journal.last_success == {"prune": 100.0}
    assert ledger.fold() == []

    ledger.record("prune", True, 2.0, None)  # the daemon's own run: counted by itself
    append_run(run_dir, "prune", False, 3.0, error="OSError: boom", finished_at=300.0)
    append_run(run_dir, "clean", True, 4.0, finished_at=400.0)
    folded = ledger.fold()
    assert [(r.task, r.ok, r.duration, r.error) for r in folded] == [
        ("prune", False, 3.0, "OSError: boom"),
        ("clean", True, 4.0, None),
    ]
    assert all(r.pid == os.getpid() for r in folded)
    assert ledger.fold() == []
    assert read_journal(run_dir).seq == 4


def test_ledger_counts_the_runs_of_a_file_replaced_since_the_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    append_run(str(run_dir), "prune", True, 1.0)
    ledger = RunLedger(str(run_dir))
    ledger.start()
    (run_dir / FILE_NAME).unlink()  # e.g. removed by hand
    append_run(str(run_dir), "prune", True, 1.0)
    assert [r.seq for r in ledger.fold()] == [1]

    (run_dir / FILE_NAME).write_text("{not json")  # damaged: read as empty, then rewritten
    assert ledger.fold() == []
    append_run(str(run_dir), "clean", False, 1.0)
    assert [(r.task, r.seq) for r in ledger.fold()] == [("clean", 1)]


def test_the_file_keeps_a_bounded_number_of_records(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    os.mkdir(run_dir)
    for _ in range(RECORDS_KEPT + 5):
        append_run(run_dir, "reconcile", True, 0.5)
    journal = read_journal(run_dir)
    assert journal.seq == RECORDS_KEPT + 5 and len(journal.records) == RECORDS_KEPT
    raw = json.loads(Path(run_dir, FILE_NAME).read_text())
    assert [r["seq"] for r in raw["records"]] == list(range(6, RECORDS_KEPT + 6))
    assert sorted(os.listdir(run_dir)) == [FILE_NAME]  # no temp file left behind


def test_planted_symlinks_and_fifos_are_never_followed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    for _ in range(7):  # a valid file elsewhere, so reading through the link would show
        append_run(str(tmp_path / "elsewhere"), "clean", True, 1.0)
    victim = tmp_path / "elsewhere" / FILE_NAME
    precious = victim.read_bytes()
    (run_dir / FILE_NAME).symlink_to(victim)
    assert read_journal(str(run_dir)).seq == 0  # not read through
    append_run(str(run_dir), "prune", True, 1.0)
    assert victim.read_bytes() == precious
    assert stat.S_ISREG(os.lstat(run_dir / FILE_NAME).st_mode)
    assert read_journal(str(run_dir)).seq == 1

    (run_dir / FILE_NAME).unlink()
    os.mkfifo(run_dir / FILE_NAME)
    assert read_journal(str(run_dir)).seq == 0  # no hang on a fifo

    linked = tmp_path / "linked-run"
    linked.symlink_to(run_dir)
    for path in (str(linked), f"{linked}/"):
        with pytest.raises(OSError):
            append_run(path, "prune", True, 1.0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gca-runs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_root_run_leaves_a_file_the_agents_user_can_read_and_replace(
    shared_dir: Path,
) -> None:
    """``sudo glance-cache-agent prune`` (umask 077) in glance's runtime dir: the
    daemon, running as glance, must still read the file and write the next."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another uid")
    run_dir = shared_dir / "run"
    run_dir.mkdir(mode=0o750)
    os.chown(run_dir, NOBODY, NOBODY)
    old_umask = os.umask(0o077)
    try:
        append_run(str(run_dir), "prune", True, 1.0)
    finally:
        os.umask(old_umask)
    st_file = os.stat(run_dir / FILE_NAME)
    assert (st_file.st_uid, stat.S_IMODE(st_file.st_mode)) == (NOBODY, 0o644)

    script = (
        "import sys; from glance_cache_agent.service.run_records import append_run, read_journal;"
        "append_run(sys.argv[1], 'prune', True, 2.0); print(read_journal(sys.argv[1]).seq)"
    )
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + [sys.executable, "-c", script, str(run_dir)],
        capture_output=True,
        text=True,
        cwd=shared_dir,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"


# ==================================================== the agent's series


def _sample(agent: AgentMetrics, name: str, task: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(agent)
    return registry.get_sample_value(name, {"task": task})


def test_records_of_other_processes_feed_the_task_series() -> None:
    agent = AgentMetrics(tasks=["clean"])
    agent.restore_task("prune", last_success=500.0, duration=3.0)  # from before a restart
    assert _sample(agent, "glance_cache_task_runs_total", "prune") == 0
    assert _sample(agent, "glance_cache_task_last_success_timestamp_seconds", "prune") == 500

    def record(seq: int, ok: bool, finished_at: float) -> RunRecord:
        return RunRecord(seq, "prune", finished_at, ok, float(seq), pid=42)

    agent.observe_record(record(1, True, 600.0))
    agent.observe_record(record(2, False, 700.0))
    agent.observe_record(record(3, True, 550.0))  # older than the last success: kept at 600
    assert _sample(agent, "glance_cache_task_runs_total", "prune") == 3
    assert _sample(agent, "glance_cache_task_failures_total", "prune") == 1
    assert _sample(agent, "glance_cache_task_duration_seconds", "prune") == 3.0
    assert _sample(agent, "glance_cache_task_last_success_timestamp_seconds", "prune") == 600


# ================================================ the daemon, end to end


#: the daemon's own tasks never run during these tests
QUIET: dict[str, Any] = {"agent": {"first_run_delay": "1h"}, "prune": {"batch_pause": 0}}


def adhoc(agent: Agent, *args: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI by hand on the daemon's runtime directory, with its own config."""
    config = agent.tmp_path / "adhoc.yaml"
    config.write_text(yaml.safe_dump(agent.config(**{**QUIET, **overrides})))
    return subprocess.run(
        [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def hits(samples: Samples) -> float:
    return samples[("glance_cache_hits_total", ())]


def task(samples: Samples, name: str, which: str = "prune") -> float:
    return samples[(f"glance_cache_task_{name}", (("task", which),))]


def fresh_scrapes(daemon: Daemon, count: int) -> list[float]:
    """``hits_total`` from ``count`` scrapes, each of a cache state newer than the last."""
    values = []
    for _ in range(count):
        values.append(hits(daemon.scrape_after(time.time())))
    return values


def test_hits_total_starts_at_zero_and_never_drops_across_an_adhoc_prune_and_a_restart(
    agent: Agent, cache: Driver
) -> None:
    now = time.time()
    ids = [image_id(n) for n in (1, 2, 3)]
    for index, key in enumerate(ids):
        cache_image(cache, key, 1000 * (index + 1))
        set_row(cache, key, hits=10 * (index + 1), last_accessed=now - 3600 + index)
    daemon = agent.start(**QUIET)
    assert hits(daemon.scrape()) == 0  # the rows' 60 hits happened before the start

    read_image(cache, ids[0])
    read_image(cache, ids[1])
    set_row(cache, ids[0], last_accessed=now - 3600)  # still the least recently accessed
    assert fresh_scrapes(daemon, 1) == [2]

    # an ad-hoc prune evicts ids[0] (11 hits) while the daemon runs
    before = time.time()
    proc = adhoc(agent, "prune", "--json", "--max-size", "5500")
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == [ids[0]]
    samples = daemon.scrape()  # runs of other processes are folded in at scrape time
    assert task(samples, "runs_total") == 1 and task(samples, "failures_total") == 0
    assert before <= task(samples, "last_success_timestamp_seconds") <= after
    assert task(samples, "runs_total", "clean") == 0
    daemon.wait_log("task run by another process finished", task="prune")
    scrapes = fresh_scrapes(daemon, 3)
    assert scrapes == [2, 2, 2]  # the evicted image's hits are not taken away

    # restart: the counter starts at 0 again; the ad-hoc run's success carries over
    last_success = task(samples, "last_success_timestamp_seconds")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.output
    daemon = agent.start(**QUIET)
    samples = daemon.scrape()
    assert hits(samples) == 0
    assert task(samples, "runs_total") == 0
    assert task(samples, "last_success_timestamp_seconds") == last_success

    seen = [hits(samples)]
    for key in (ids[2], ids[2], ids[1]):
        read_image(cache, key)
        seen += fresh_scrapes(daemon, 1)
    seen += [hits(daemon.scrape()) for _ in range(3)]
    assert seen == sorted(seen) and seen[-1] == 3, seen


def test_a_failed_adhoc_run_counts_as_a_failure_of_the_daemons_task(
    agent: Agent, cache: Driver, tmp_path: Path
) -> None:
    daemon = agent.start(**QUIET)
    assert task(daemon.scrape(), "failures_total") == 0
    (tmp_path / "run").mkdir()  # systemd's RuntimeDirectory= (no run has made it yet)
    # the cache directory is missing for this run (an unmounted volume)
    proc = adhoc(agent, "prune", cache={"dir": str(tmp_path / "unmounted")})
    assert proc.returncode == 1, proc.stderr
    samples = daemon.scrape()
    assert task(samples, "runs_total") == 1
    assert task(samples, "failures_total") == 1
    assert task(samples, "last_success_timestamp_seconds") == 0
    record = daemon.wait_log("task run by another process failed", task="prune")
    assert "does not exist" in record["error"]

    # a dry run is a preview, not a run of the task
    assert adhoc(agent, "prune", "--dry-run").returncode == 0
    assert task(daemon.scrape(), "runs_total") == 1
