"""A database the agent cannot write, runs that fail part-way, mistyped rows.

Issue 9 point 4. ``BEGIN IMMEDIATE`` succeeds on a ``cache.db`` the process
cannot write (SQLite silently opens it read-only), so the probe must be a
real write: these tests run the CLI as another uid (``setpriv``, we run as
root) against a cache whose ``cache.db`` that uid cannot write, and check
that prune, delete-cached and delete-all-cached stop before the first
unlink. Partial failures are real too: an immutable file (``chattr +i``)
and a real exclusive SQLite lock taken between two prune batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from glance_cache_agent import cli
from glance_cache_agent.config import MetricsConfig
from glance_cache_agent.driver import CacheSettings, Driver
from glance_cache_agent.exporter.metrics import CacheStateCollector
from tests.helpers.cache import cache_image, disk_state, rows, set_row, uid

NOBODY = 65534
IDS = [uid("ro-0"), uid("ro-1"), uid("ro-2")]
READ_ONLY = "database is read-only: attempt to write a readonly database"

CONFIG = """\
cache:
  dir: {cache_dir}
  busy_timeout: 0.2s
prune:
  batch_size: 1
  batch_pause: 0s
reconcile:
  orphan_grace: 0s
agent:
  runtime_dir: {run_dir}
  lock_timeout: 1s
  glance_lock_timeout: 1s
"""


@dataclass
class Cache:
    root: Path
    config: Path
    driver: Driver

    @property
    def db(self) -> str:
        return self.driver.db_path


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gca-readonly-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)
    shutil.rmtree(path)


@pytest.fixture
def cache(root: Path) -> Cache:
    """Three tracked images (``IDS[0]`` least recently read) and a config file."""
    driver = Driver(CacheSettings(cache_dir=str(root / "cache")))
    driver.configure()
    now = time.time()
    for index, image_id in enumerate(IDS):
        cache_image(driver, image_id, 1000)
        set_row(driver, image_id, last_accessed=now - 3600 + index)
    (root / "run").mkdir()
    config = root / "agent.yaml"
    config.write_text(CONFIG.format(cache_dir=root / "cache", run_dir=root / "run"))
    return Cache(root, config, driver)


def data_state(cache: Cache) -> tuple[object, ...]:
    """Image files (not lock files), rows, and the database's bytes."""
    files = {k: v for k, v in disk_state(cache.driver.base_dir).items() if "glance-cache" not in k}
    return files, rows(cache.driver), hashlib.sha256(Path(cache.db).read_bytes()).hexdigest()


def give_to_nobody(*paths: Path) -> None:
    for top in paths:
        os.chown(top, NOBODY, NOBODY)
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)


def as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another uid")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def run_cli(cache: Cache, *args: str, prefix: list[str] | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "GLANCE_CACHE_AGENT_CONFIG"}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "glance_cache_agent.cli", "-c", str(cache.config)]
        + list(args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cache.root,
        timeout=60,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The CLI's own error lines (logs aside)."""
    return [line for line in stderr.splitlines() if line.startswith("glance-cache-agent: ")]


def make_unwritable(cache: Cache, how: str) -> None:
    """The cache belongs to uid 65534, but ``cache.db`` is not writable by it."""
    give_to_nobody(Path(cache.driver.base_dir), cache.root / "run")
    if how == "owner_0444":
        os.chmod(cache.db, 0o444)
    else:  # root_0644
        os.chown(cache.db, 0, 0)
        os.chmod(cache.db, 0o644)


def immutable(path: str) -> None:
    """``chattr +i`` for real (ext4, xfs, btrfs); the ``root`` fixture undoes it."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    proc = subprocess.run(["chattr", "+i", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"chattr +i not possible here: {proc.stderr.strip()}")


# ------------------------------------------------------- the write probe


PROBE = textwrap.dedent(
    """
    import json, sqlite3, sys
    from glance_cache_agent.driver import DatabaseReadOnly
    from glance_cache_agent.driver.db import Database

    path = sys.argv[1]
    def attempt(*statements):
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
            return "ok"
        except sqlite3.Error as exc:
            return str(exc)
        finally:
            conn.close()
    found = {
        "begin_immediate": attempt("BEGIN IMMEDIATE", "COMMIT"),
        "update_no_row": attempt(
            "BEGIN IMMEDIATE", "UPDATE cached_images SET hits = hits WHERE 0", "ROLLBACK"
        ),
    }
    try:
        Database(path, 0.2).check_writable()
        found["check_writable"] = "ok"
    except DatabaseReadOnly as exc:
        found["check_writable"] = "DatabaseReadOnly: " + str(exc)
    print(json.dumps(found))
    """
)


@pytest.mark.parametrize("how", ["owner_0444", "root_0644", "directory_read_only"])
def test_check_writable_is_a_real_write_probe(cache: Cache, how: str) -> None:
    """Measured: BEGIN IMMEDIATE succeeds on a db this uid cannot write; an
    UPDATE matching no row fails only when the file itself is read-only (no
    journal is needed otherwise); check_writable fails in every case."""
    prefix = as_nobody()
    if how == "directory_read_only":
        os.chown(cache.db, NOBODY, NOBODY)  # the file is writable, its directory is not
    else:
        make_unwritable(cache, how)
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, cache.db],
        capture_output=True,
        text=True,
        cwd=cache.root,
        timeout=60,
        check=True,
    )
    found = json.loads(proc.stdout)
    assert found["begin_immediate"] == "ok"
    no_journal_needed = "ok" if how == "directory_read_only" else None
    assert found["update_no_row"] == (no_journal_needed or "attempt to write a readonly database")
    assert found["check_writable"] == f"DatabaseReadOnly: {cache.db}: {READ_ONLY}"


def test_check_writable_changes_nothing_on_a_writable_database(cache: Cache) -> None:
    """The probe is rolled back: same bytes, same mtime, no journal left behind."""
    before = data_state(cache)
    mtime = os.stat(cache.db).st_mtime_ns
    cache.driver.store.check_writable()
    assert data_state(cache) == before
    assert os.stat(cache.db).st_mtime_ns == mtime
    assert not os.path.exists(cache.db + "-journal")


# --------------------------------------- read-only db: nothing is unlinked


COMMANDS = {
    "prune": ["prune", "--max-size", "1"],
    "delete-cached": ["delete-cached", *IDS],
    "delete-all-cached": ["delete-all-cached", "--yes"],
}


@pytest.mark.parametrize("how", ["owner_0444", "root_0644"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_unwritable_database_stops_before_the_first_unlink(
    cache: Cache, command: str, how: str
) -> None:
    prefix = as_nobody()
    make_unwritable(cache, how)
    before = data_state(cache)

    human = run_cli(cache, *COMMANDS[command], prefix=prefix)
    assert human.returncode == cli.EXIT_FAILED, human.stderr
    assert error_lines(human.stderr) == [f"glance-cache-agent: {cache.db}: {READ_ONLY}"]
    assert "Traceback" not in human.stderr

    proc = run_cli(cache, *COMMANDS[command], "--json", prefix=prefix)
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr
    assert error_lines(proc.stderr) == [f"glance-cache-agent: {cache.db}: {READ_ONLY}"]
    doc = json.loads(proc.stdout)  # what was done (nothing) and why not
    assert doc["error"] == f"{cache.db}: {READ_ONLY}"
    if command == "prune":
        assert (doc["images"], doc["pruned_images"], doc["stopped_by"]) == ([], 0, "error")
    elif command == "delete-cached":
        assert (doc["deleted"], doc["failed"], doc["not_attempted"]) == ([], {}, IDS)
    else:
        assert doc["deleted"] == 0 and doc["not_attempted"] == IDS

    assert data_state(cache) == before  # every image file, every row, the db's bytes


# ------------------------------------------------------ partial failures


def test_delete_cached_reports_each_id_and_tries_the_rest(cache: Cache) -> None:
    """The middle file cannot be removed: the others still go, the JSON
    document says which went and why the other did not, exit 1."""
    stuck = cache.driver.get_image_filepath(IDS[1])
    immutable(stuck)
    missing = uid("ro-missing")

    proc = run_cli(cache, "delete-cached", *IDS, missing, "--json")
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr
    assert json.loads(proc.stdout) == {
        "deleted": [IDS[0], IDS[2]],
        "not_found": [missing],
        "failed": {IDS[1]: "Operation not permitted"},
        "not_attempted": [],
        "error": None,
    }
    assert set(cache.driver.scan_base().images) == {IDS[1]}
    assert set(rows(cache.driver)) == {IDS[1]}  # its row stays with its file

    human = run_cli(cache, "delete-cached", IDS[1])
    assert human.returncode == cli.EXIT_FAILED
    assert human.stdout.strip() == f"failed {IDS[1]}: Operation not permitted"


def test_delete_all_cached_reports_the_file_it_could_not_remove(cache: Cache) -> None:
    immutable(cache.driver.get_image_filepath(IDS[0]))
    phantom = uid("ro-phantom")
    with sqlite3.connect(cache.db) as conn:
        conn.execute("INSERT INTO cached_images (image_id, size) VALUES (?, 5)", (phantom,))

    proc = run_cli(cache, "delete-all-cached", "--yes", "--json")
    assert proc.returncode == cli.EXIT_FAILED, proc.stderr
    assert json.loads(proc.stdout) == {
        "deleted": 2,
        "failed": {IDS[0]: "Operation not permitted"},
        "not_attempted": [],
        "error": None,
    }
    assert set(cache.driver.scan_base().images) == {IDS[0]}
    assert set(rows(cache.driver)) == {IDS[0]}  # the phantom row went, the kept file's stayed


def test_prune_failing_mid_run_still_reports_what_it_evicted(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real exclusive lock taken by another connection after the first batch
    (batch_size 1): the second batch's row delete times out. The JSON result
    lists the two images whose files are gone, plus ``error``; exit 1."""
    holder = sqlite3.connect(cache.db, isolation_level=None)
    real_delete_rows = Driver.delete_rows
    calls: list[int] = []

    def lock_before_second_batch(self: Driver, *args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            holder.execute("BEGIN EXCLUSIVE")
        return real_delete_rows(self, *args, **kwargs)

    monkeypatch.setattr(Driver, "delete_rows", lock_before_second_batch)
    try:
        code = cli.main(["-c", str(cache.config), "prune", "--max-size", "1", "--json"])
    finally:
        holder.close()
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    doc = json.loads(out)
    assert doc["images"] == IDS[:2] and doc["pruned_images"] == 2
    assert (doc["pruned_bytes"], doc["size_before"], doc["size_after"]) == (2000, 3000, 1000)
    assert doc["stopped_by"] == "error"
    assert doc["error"].startswith(f"{cache.db}: database is locked")
    assert error_lines(err) == [f"glance-cache-agent: {doc['error']}"]
    assert set(cache.driver.scan_base().images) == {IDS[2]}
    assert set(rows(cache.driver)) == {IDS[1], IDS[2]}  # a phantom row, never an orphan file


# ------------------------------------------------------------ mistyped rows


MISTYPED = [("hits", "many"), ("size", "big"), ("last_accessed", "yesterday")]


@pytest.mark.parametrize(("column", "value"), MISTYPED)
@pytest.mark.parametrize("command", ["list-cached", "status", "prune", "reconcile"])
def test_a_mistyped_row_is_one_clear_error(
    cache: Cache, command: str, column: str, value: str
) -> None:
    bad = IDS[1]
    set_row(cache.driver, bad, **{column: value})
    before = data_state(cache)
    args = [command, "--max-size", "1"] if command == "prune" else [command]
    proc = run_cli(cache, *args, "--json")
    assert proc.returncode == cli.EXIT_FAILED, proc.stdout
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"glance-cache-agent: {cache.db}: row {bad!r} of cached_images: column {column}"
        f" holds {value!r}, not a finite number; fix or delete that row"
    ]
    assert proc.stdout == ""
    assert data_state(cache) == before


def test_a_mistyped_row_makes_the_metrics_refresh_report_a_scrape_failure(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    set_row(cache.driver, IDS[0], hits="many")
    spawned: list[Callable[[], None]] = []
    collector = CacheStateCollector(
        lambda: cache.driver, 10**9, MetricsConfig(), spawn=spawned.append
    )
    registry = CollectorRegistry()
    registry.register(collector)
    caplog.set_level(logging.WARNING)
    assert collector.refresh() is None
    assert "glance_cache_scrape_success 0.0" in generate_latest(registry).decode()
    assert f"row {IDS[0]!r} of cached_images: column hits holds 'many'" in caplog.text
