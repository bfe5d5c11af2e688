"""Reliability beside a live Glance (issue 6, section 1).

Four worker processes (``tests/helpers/glance_worker.py``) drive Glance's REAL sqlite
cache driver (glance==33.0.0, the ``interop`` extra) on one cache directory:
they write, read and abandon images in a loop, while this process runs the
agent's clean, prune and reconcile back to back on a small ``max_size``.

Asserted, correctness outcomes only: zero Glance operations failing (on a
lock or otherwise, raised or only logged), no incomplete file deleted under
its writer, every read that opened a file read it completely, no agent
error, ``PRAGMA integrity_check`` ok, and after one final reconcile every
image file has a row and every row a file. Coverage is asserted too and does
not depend on the clock: each worker does at least ``MIN_OPS`` operations
(a seeded mix), its held writes come every ``HOLD_EVERY_OPS`` operations,
and a held write waits for two clean runs, however long they take.

Reported, never asserted: latencies (p50/p99/max of Glance's database
operations, the agent's runs and write transactions). They depend on the
machine and its load; the time Glance's writers wait beside a prune is
measured by ``make bench`` (``bench/bench_lock_etiquette.py``).

The run lasts ``GLANCE_CACHE_AGENT_RELIABILITY_SECONDS`` (default 60, as the
issue asks) and at least ``MIN_OPS`` operations per worker. The figures are
printed (``pytest -s``) and written as JSON to
``GLANCE_CACHE_AGENT_RELIABILITY_REPORT`` when that is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from glance_cache_agent.driver import CacheSettings, Driver, DriverError, LockTimeout
from glance_cache_agent.maintenance import (
    CleanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from tests.helpers.tools import ci

pytestmark = [pytest.mark.slow, pytest.mark.interop]

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4
MAX_SIZE = 8 * 1024 * 1024  # ~30 images of 64-512 KiB: prune evicts all the time
STALL_TIME = 5.0
#: far above Glance's commit window (rename, then an INSERT retried for at
#: most 2 s) even on a starved machine: a row-less file younger than this is
#: one Glance is still committing (the final reconcile runs with no grace)
ORPHAN_GRACE = 30.0
DEFAULT_SECONDS = 60.0
#: operations each worker does at least, whatever the duration gives
MIN_OPS = 120
#: every HOLD_EVERY_OPS-th operation of a worker is a held write
HOLD_EVERY_OPS = 80
#: a hang guard for waits on processes (start-up, held writes, the end of the
#: run), not a timing expectation: only a hung run ever reaches it
HANG_GUARD = 300.0
#: Mean pause between one worker's cache operations (a glance-api spends its
#: time streaming image data, not in cache.db). With 0.1 s the four workers do
#: about 40 cache operations a second, far above a real node; without any pause
#: Glance's own four processes already push its p99 past 250 ms on 2 cores
#: (its 50 ms lock polling), agent or not. Pacing, not a timing expectation.
THINK_TIME = 0.1


def _duration() -> float:
    raw = os.environ.get("GLANCE_CACHE_AGENT_RELIABILITY_SECONDS", "").strip()
    return float(raw) if raw else DEFAULT_SECONDS



def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _write_counter(path: Path, value: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(value))
    os.replace(tmp, path)


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """One line of a worker's stdout, failing the test past ``deadline``."""
    assert proc.stdout is not None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline().strip()  # "" at EOF: the worker died
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise AssertionError("worker did not answer in time")


class Agent:
    """Clean, prune and reconcile back to back, counting what they did."""

    def __init__(self, settings: CacheSettings, counter: Path) -> None:
        self.txn_hold: list[float] = []
        self.driver = Driver(settings, txn_observer=self.txn_hold.append)
        self.counter = counter
        self.runs = {"clean": 0, "prune": 0, "reconcile": 0}
        self.totals = {
            "evicted_images": 0,
            "evicted_bytes": 0,
            "prune_skipped_images": 0,
            "stalled_removed": 0,
            "invalid_removed": 0,
            "clean_skipped_active": 0,
            "orphans_adopted": 0,
            "orphans_in_grace_seen": 0,
            "phantoms_removed": 0,
            "sizes_fixed": 0,
        }
        self.errors: list[str] = []
        self.durations: dict[str, list[float]] = {"clean": [], "prune": [], "reconcile": []}
        self.clean_policy = CleanPolicy(stall_time=STALL_TIME, settle_time=0.5)
        self.prune_policy = PrunePolicy(max_size=MAX_SIZE, batch_size=50, batch_pause=0.1)
        self.reconcile_policy = ReconcilePolicy(orphan_grace=ORPHAN_GRACE)

    def _timed(self, name: str, fn: Any) -> Any:
        started = time.monotonic()
        try:
            return fn()
        except (DriverError, LockTimeout, OSError) as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return None
        finally:
            self.durations[name].append(time.monotonic() - started)
            self.runs[name] += 1

    def cycle(self) -> None:
        c = self._timed("clean", lambda: run_clean(self.driver, self.clean_policy))
        _write_counter(self.counter, self.runs["clean"])
        if c is not None:
            self.totals["stalled_removed"] += c.stalled_removed
            self.totals["invalid_removed"] += c.invalid_removed
            self.totals["clean_skipped_active"] += c.skipped_active
            self.errors += [f"clean: {e}" for e in c.errors]
        p = self._timed("prune", lambda: run_prune(self.driver, self.prune_policy))
        if p is not None:
            self.totals["evicted_images"] += p.pruned_images
            self.totals["evicted_bytes"] += p.pruned_bytes
            self.totals["prune_skipped_images"] += len(p.skipped_images)
            self.errors += [f"prune: {e}" for e in p.errors]
        r = self._timed("reconcile", lambda: run_reconcile(self.driver, self.reconcile_policy))
        if r is not None:
            self.totals["orphans_adopted"] += r.orphans_adopted
            self.totals["orphans_in_grace_seen"] += r.orphans_in_grace
            self.totals["phantoms_removed"] += r.phantoms_removed
            self.totals["sizes_fixed"] += r.sizes_fixed
            self.errors += [f"reconcile: {e}" for e in r.errors]



def _go_while(
    procs: list[tuple[dict[str, Any], subprocess.Popen[str]]],
    cycle: Callable[[], None],
    duration: float,
    tmp_path: Path,
) -> float:
    """Tell the ready workers to go, run ``cycle`` (the agent's runs) until they
    all end, check each ended cleanly; return how long they ran."""
    for _config, proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    started = time.monotonic()
    while any(proc.poll() is None for _c, proc in procs):
        cycle()
        assert time.monotonic() < started + duration + HANG_GUARD, "workers did not stop"
    elapsed = time.monotonic() - started
    for config, proc in procs:
        assert proc.returncode == 0, (
            config["index"],
            proc.returncode,
            (tmp_path / f"worker-{config['index']}.err").read_text()[-3000:],
        )
    return elapsed

def _start_workers(
    tmp_path: Path,
    cache: Path,
    locks: Path,
    counter: Path,
    duration: float,
    module: str = "tests.helpers.glance_worker",
    extra: dict[str, Any] | None = None,
) -> list[tuple[dict[str, Any], subprocess.Popen[str]]]:
    """Start the ``WORKERS`` worker processes (``module``; ``extra`` joins their config)."""
    procs = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    for index in range(WORKERS):
        config = {
            "index": index,
            "seed": 6100 + index,
            "cache_dir": str(cache),
            "lock_path": str(locks),
            "clean_counter": str(counter),
            "duration": duration,
            "stall_time": STALL_TIME,
            "glance_max_size": MAX_SIZE,
            "min_ops": MIN_OPS,
            "hold_every_ops": HOLD_EVERY_OPS,
            "hold_first_op": 10 + 7 * index,
            "think": THINK_TIME,
            "hold_deadline": HANG_GUARD,
            "result": str(tmp_path / f"worker-{index}.json"),
            **(extra or {}),
        }
        procs.append(
            (
                config,
                subprocess.Popen(
                    [sys.executable, "-m", module, json.dumps(config)],
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=open(tmp_path / f"worker-{index}.err", "w"),  # noqa: SIM115
                    text=True,
                ),
            )
        )
    return procs


def _stop(procs: list[tuple[dict[str, Any], subprocess.Popen[str]]]) -> None:
    for _config, proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_agent_beside_four_live_glance_workers(tmp_path: Path) -> None:
    if importlib.util.find_spec("glance") is None:
        if ci():
            pytest.fail("CI is set but Glance is not installed (the interop extra)", pytrace=False)
        pytest.skip("glance is not importable; install the 'interop' extra")

    duration = _duration()
    cache, locks = tmp_path / "cache", tmp_path / "locks"
    counter = tmp_path / "clean-runs"
    _write_counter(counter, 0)
    procs = _start_workers(tmp_path, cache, locks, counter, duration)
    try:
        ready_by = time.monotonic() + HANG_GUARD
        for config, proc in procs:
            line = _read_line(proc, ready_by)
            assert line == "ready", (config["index"], line)

        # The workers' Glance created cache.db; the agent only opens it.
        agent = Agent(CacheSettings(cache_dir=str(cache), lock_path=str(locks)), counter)
        elapsed = _go_while(procs, agent.cycle, duration, tmp_path)
        results = [json.loads(Path(c["result"]).read_text()) for c, _p in procs]
    finally:
        _stop(procs)

    # Workers stopped: one final clean and a reconcile with no grace left.
    final_clean = run_clean(agent.driver, CleanPolicy(stall_time=STALL_TIME, settle_time=0))
    final = run_reconcile(agent.driver, ReconcilePolicy(orphan_grace=0))
    rows = {row.image_id for row in agent.driver.store.list_rows()}
    files = set(agent.driver.scan_base().images)
    leftover_incomplete = [i.name for i in agent.driver.scan_state("incomplete")]
    with sqlite3.connect(f"file:{agent.driver.db_path}?mode=ro", uri=True) as conn:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    quick = agent.driver.check_database()

    report = _report(results, agent, elapsed, duration, final, final_clean, rows, files)
    report["integrity_check"] = integrity
    text = json.dumps(report, indent=2, sort_keys=True)
    print("\nreliability beside a live Glance:\n" + text)
    if out := os.environ.get("GLANCE_CACHE_AGENT_RELIABILITY_REPORT"):
        Path(out).write_text(text + "\n")

    failures = report["failures"]
    assert failures["incomplete_vanished_under_writer"] == [], "clean deleted a live download"
    assert failures["glance_lock_failures"] == [], "Glance operations failed on a lock"
    assert failures["glance_other_failures"] == [], "Glance operations failed"
    assert failures["glance_error_logs"] == [], "Glance logged (and swallowed) DB errors"
    assert failures["short_reads"] == [], "a reader that opened a file did not read it all"
    assert failures["bad_content"] == []
    assert integrity == ["ok"]
    assert quick == []
    assert files - rows == set(), "image files without a row after the final reconcile"
    assert rows - files == set(), "rows without a file after the final reconcile"
    assert leftover_incomplete == [], "stalled incomplete files left after the final clean"
    # The run really exercised what it claims to.
    assert report["agent"]["evicted_images"] > 0, "prune never evicted: max_size too large?"
    assert report["glance_ops"]["writes"] > 0 and report["glance_ops"]["reads"] > 0
    assert report["glance_ops"]["held_writes"] > 0
    assert report["held_writes_unconfirmed"] == 0, "held writes not covered by two cleans"
    assert report["agent"]["errors"] == [], "the agent failed beside Glance"
    # clean removed the dead writers' files, all of them, and nothing else
    removed = report["agent"]["stalled_removed"] + report["final"]["clean_stalled_removed"]
    assert removed == report["glance_ops"]["crashed_writes"]
    assert report["agent"]["clean_skipped_active"] > 0, "no held write was ever spared"


def _report(
    results: list[dict[str, Any]],
    agent: Any,  # Agent here; the centralized test's CLI agent has the same figures
    elapsed: float,
    duration: float,
    final: Any,
    final_clean: Any,
    rows: set[str],
    files: set[str],
) -> dict[str, Any]:
    by_op: dict[str, list[float]] = {}
    ops: dict[str, int] = {}
    for res in results:
        for op, values in res["latencies"].items():
            by_op.setdefault(op, []).extend(values)
        for name, count in res["counts"].items():
            if name != "elapsed":
                ops[name] = ops.get(name, 0) + count
    every = [v for values in by_op.values() for v in values]

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "count": len(values),
            "p50": _ms(_percentile(values, 50)),
            "p99": _ms(_percentile(values, 99)),
            "max": _ms(max(values, default=0.0)),
        }

    def flat(key: str) -> list[str]:
        return [f"w{res['index']}: {item}" for res in results for item in res[key]]

    return {
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "workers": len(results),
        "glance_ops": ops,
        "glance_db_ms": {"all": stats(every), **{op: stats(v) for op, v in by_op.items()}},
        "held_writes_unconfirmed": sum(res["held_unconfirmed"] for res in results),
        "configure_retries": sum(res["configure_retries"] for res in results),
        "failures": {
            "glance_lock_failures": flat("lock_failures"),
            "glance_other_failures": flat("other_failures"),
            "glance_error_logs": flat("log_errors"),
            "incomplete_vanished_under_writer": flat("vanished"),
            "short_reads": flat("short_reads"),
            "bad_content": flat("bad_content"),
        },
        "agent": {
            "runs": agent.runs,
            **agent.totals,
            "run_ms": {name: stats(values) for name, values in agent.durations.items()},
            "write_txn_hold_ms": stats(agent.txn_hold),
            "errors": agent.errors,
        },
        "final": {
            "clean_stalled_removed": final_clean.stalled_removed,
            "reconcile_orphans_adopted": final.orphans_adopted,
            "reconcile_phantoms_removed": final.phantoms_removed,
            "rows": len(rows),
            "files": len(files),
        },
    }
