"""Faults (issue 6 section 3): what test_database/test_cli/test_daemon do not cover yet.

Already covered elsewhere and not repeated here: typed errors for a zeroed
header, a damaged page, a missing table and the busy timeout
(test_database.py); missing dir/db and corrupt db exit codes for ``status``,
``prune`` and ``clean`` (test_cli.py); ``/healthz`` 503 on a corrupt db
(test_daemon.py); unlink failures in clean and prune (test_clean.py s38,
test_prune.py); the clock jumping forward past ``stall_time`` with a live
writer (test_clean.py).

Real faults first: a read-only bind mount (EROFS), ``chattr +i`` on
``cache.db`` (SQLite's "attempt to write a readonly database"), an exclusive
SQLite lock held by this process, a missing or replaced cache directory.
Only ENOSPC and EIO are injected with ``unittest.mock``. No test sleeps for
timing logic: waits poll a condition against a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from freezegun import freeze_time

from glance_cache_agent import cli
from glance_cache_agent.driver import (
    CacheSettings,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    Driver,
)
from glance_cache_agent.maintenance import (
    CleanPolicy,
    OrphanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from tests.helpers.agent_process import Agent, NotifySocket, Samples, wait_until
from tests.helpers.cache import (
    at,
    cache_image,
    disk_state,
    no_pause,
    rows,
    set_row,
    start_writer,
    uid,
    write_file,
)

DAY = 86400
HOUR = 3600




def populate(driver: Driver, count: int, size: int = 1000, prefix: str = "img") -> list[str]:
    """``count`` tracked images, the first one the least recently accessed."""
    now = time.time()
    ids = []
    for index in range(count):
        image_id = uid(f"{prefix}-{index}")
        cache_image(driver, image_id, size)
        set_row(driver, image_id, last_accessed=now - HOUR + index)
        ids.append(image_id)
    return ids


def data_state(root: str) -> dict[str, tuple[int, int, int]]:
    """``disk_state`` without the lock files maintenance creates (they hold no data)."""
    return {k: v for k, v in disk_state(root).items() if not k.startswith("glance-cache")}


def files_and_rows_agree(driver: Driver) -> None:
    """Every image file has a row and every row a file."""
    assert set(rows(driver)) == set(driver.scan_base().images)


# ----------------------------------------------------------- real EROFS


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Bind-mount a directory read-only elsewhere (real EROFS); skip where mounts are denied."""
    mounts: list[Path] = []

    def mount(source: Path) -> Path:
        target = tmp_path / f"ro-{len(mounts)}"
        target.mkdir()
        for argv in (
            ["mount", "--bind", str(source), str(target)],
            ["mount", "-o", "remount,ro,bind", str(target)],
        ):
            if shutil.which("mount") is None:
                pytest.skip("no mount(8)")
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                if argv[1] != "--bind":
                    subprocess.run(["umount", str(target)], check=False)
                pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()}")
            if argv[1] == "--bind":
                mounts.append(target)
        return target

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_read_only_filesystem_for_real_deletes_nothing_and_reports_every_file(
    tmp_path: Path, read_only_view: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The cache seen through a read-only mount: every maintenance task fails
    each deletion with EROFS, reports it, and nothing changes on disk or in rows.
    (The database is read-only too, so the first write is DatabaseReadOnly.)"""
    rw = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    rw.configure()
    populate(rw, 4)
    write_file(Path(rw.base_dir) / uid("orphan-1"), 500, age=DAY)  # no row
    write_file(Path(rw.base_dir) / "invalid" / uid("bad-1"), 300)
    write_file(Path(rw.base_dir) / "incomplete" / uid("stalled-1"), 300, age=2 * DAY)
    before_disk, before_rows = data_state(rw.base_dir), rows(rw)

    ro_dir = read_only_view(Path(rw.base_dir))
    (tmp_path / "locks").mkdir()  # Glance's lock_path on a writable filesystem
    settings = CacheSettings(cache_dir=str(ro_dir), lock_path=str(tmp_path / "locks"))
    ro = Driver(settings)
    with pytest.raises(OSError) as probe:
        (ro_dir / "probe").write_bytes(b"")
    assert probe.value.errno == errno.EROFS

    caplog.set_level(logging.WARNING)
    clean = run_clean(ro, CleanPolicy(stall_time=HOUR, settle_time=0), pause=no_pause)
    assert (clean.invalid_removed, clean.stalled_removed, clean.bytes_freed) == (0, 0, 0)
    assert len(clean.errors) == 2 and all("Read-only file system" in e for e in clean.errors)

    # the database is read-only too: prune stops before its first unlink
    with pytest.raises(DatabaseReadOnly, match="attempt to write a readonly database"):
        run_prune(ro, PrunePolicy(max_size=1500, batch_pause=0), pause=no_pause)

    recon = run_reconcile(ro, ReconcilePolicy(orphan_grace=0, orphans=OrphanPolicy.DELETE))
    assert recon.orphans_removed == 0
    assert recon.errors == [f"{ro_dir / uid('orphan-1')}: Read-only file system"]
    # adopting needs a database write: SQLite opened the file read-only
    with pytest.raises(DatabaseReadOnly, match="attempt to write a readonly database"):
        run_reconcile(ro, ReconcilePolicy(orphan_grace=0, orphans=OrphanPolicy.ADOPT))

    assert data_state(rw.base_dir) == before_disk
    assert rows(rw) == before_rows
    failures = [r for r in caplog.records if "Read-only file system" in r.getMessage()]
    assert len(failures) == len(clean.errors) + 1  # one line per file


# ------------------------------------------------- mocked EROFS / ENOSPC / EIO


def failing(code: int, only: Callable[[str], bool] = lambda _p: True) -> Callable[..., None]:
    """An ``os.unlink`` stand-in raising ``code`` for chosen paths."""
    real_unlink = os.unlink

    def fake(path: Any, *args: Any, **kwargs: Any) -> None:
        if only(os.fspath(path)):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    return fake


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EIO])
def test_unlink_faults_in_every_task_are_reported_and_the_run_continues(
    driver: Driver, code: int
) -> None:
    """Every other file is still handled; the failing ones keep file and row."""
    populate(driver, 4)
    base = Path(driver.base_dir)
    write_file(base / "invalid" / uid("bad-1"), 10)
    write_file(base / "invalid" / uid("bad-2"), 10)
    write_file(base / "incomplete" / uid("stalled-1"), 10, age=2 * DAY)
    write_file(base / uid("orphan-1"), 10, age=DAY)
    write_file(base / uid("orphan-2"), 10, age=DAY)
    sick = {uid("bad-1"), uid("img-0"), uid("orphan-1")}  # one failing file per task
    fake = failing(code, lambda p: os.path.basename(p) in sick)
    message = os.strerror(code)

    with mock.patch("os.unlink", fake):
        clean = run_clean(driver, CleanPolicy(stall_time=HOUR, settle_time=0), pause=no_pause)
        prune = run_prune(driver, PrunePolicy(max_size=2000, batch_pause=0), pause=no_pause)
        recon = run_reconcile(driver, ReconcilePolicy(orphan_grace=0, orphans=OrphanPolicy.DELETE))

    assert (clean.invalid_removed, clean.stalled_removed) == (1, 1)
    assert clean.errors == [f"{base / 'invalid' / uid('bad-1')}: {message}"]
    assert (base / "invalid" / uid("bad-1")).exists()

    # img-0 could not go, so img-1 and img-2 went (never more than the target needs)
    assert prune.images == [uid("img-1"), uid("img-2")]
    assert prune.errors == [f"{base / uid('img-0')}: {message}"]
    assert prune.stopped_by == "victims_changed"
    assert set(driver.scan_base().images) == {uid("img-0"), uid("img-3"), uid("orphan-1")}

    assert recon.orphans_removed == 1 and recon.errors == [f"{base / uid('orphan-1')}: {message}"]
    assert (base / uid("orphan-1")).exists()
    assert set(rows(driver)) == {uid("img-0"), uid("img-3")}  # the orphan that stayed stays rowless


def test_cli_exits_1_with_one_line_per_failed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC injected under the CLI (in-process, so the mock applies): exit 1,
    one error line per file in the output, one warning log line per file."""
    config = write_config(tmp_path, max_size="1KiB")
    driver = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    driver.configure()
    populate(driver, 3)
    with mock.patch("os.unlink", failing(errno.ENOSPC, lambda p: p.endswith(uid("img-0")))):
        code = cli.main(["-c", str(config), "--log-format", "console", "prune"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert [line for line in out.splitlines() if line.startswith("error:")] == [
        f"error: {driver.base_dir}/{uid('img-0')}: No space left on device"
    ]
    assert sum(uid("img-0") in line and "No space left" in line for line in err.splitlines()) == 1
    assert set(driver.scan_base().images) == {uid("img-0"), uid("img-2")}  # img-1 went instead
    files_and_rows_agree(driver)


def test_rename_fault_during_commit_keeps_the_download_and_no_row(driver: Driver) -> None:
    """EROFS/EIO on the commit rename: the write fails, nothing is cached, no row,
    and the partial file is not left looking like a live download."""
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if os.path.dirname(os.fspath(dst)) == driver.base_dir:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dst))
        real_rename(src, dst)

    with (
        mock.patch("os.rename", rename),
        pytest.raises(OSError) as caught,
        driver.open_for_write(uid("img-x")) as handle,
    ):
        handle.write(b"z" * 100)
    assert caught.value.errno == errno.EROFS
    assert not driver.is_cached(uid("img-x"))
    assert rows(driver) == {}
    assert (Path(driver.base_dir) / "invalid" / uid("img-x")).read_bytes() == b"z" * 100
    assert not (Path(driver.base_dir) / "incomplete" / uid("img-x")).exists()


def test_enospc_on_write_during_a_download_rolls_back_cleanly(driver: Driver) -> None:
    """ENOSPC from ``write`` inside ``open_for_write``: the error reaches the caller,
    the partial file goes to ``invalid/`` (clean removes it), an existing good
    cached copy and its row are kept."""
    cache_image(driver, uid("img-a"), 50)
    good_rows = rows(driver)

    class Full:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            self.handle.write(data[:10])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with (
        pytest.raises(OSError, match="No space left"),
        driver.open_for_write(uid("img-a")) as handle,
    ):
        Full(handle).write(b"q" * 100)
    assert Path(driver.get_image_filepath(uid("img-a"))).read_bytes() == b"x" * 50
    assert rows(driver) == good_rows
    assert (Path(driver.base_dir) / "invalid" / uid("img-a")).stat().st_size == 10
    assert run_clean(driver, CleanPolicy(settle_time=0)).invalid_removed == 1


# ------------------------------------------------------ sqlite I/O errors


class _FaultyConnection(sqlite3.Connection):
    """Raises SQLite's own 'disk I/O error' for statements matching ``fail_on``."""

    fail_on: tuple[str, ...] = ()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if any(word in sql for word in self.fail_on):
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


@contextlib.contextmanager
def sqlite_fault(*statements: str) -> Iterator[None]:
    """Make the driver's connections fail the given statements with 'disk I/O error'."""
    real_connect = sqlite3.connect

    class Conn(_FaultyConnection):
        fail_on = statements

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=Conn, **kwargs)

    # the driver calls ``sqlite3.connect`` through its module's import of sqlite3
    with mock.patch.object(sqlite3, "connect", connect):
        yield


def test_sqlite_io_error_is_a_typed_database_error(driver: Driver) -> None:
    populate(driver, 2)
    with sqlite_fault("SELECT"), pytest.raises(DatabaseError) as caught:
        driver.store.list_rows()
    assert type(caught.value) is DatabaseError  # not mistaken for locked/corrupt/read-only
    assert str(caught.value) == f"{driver.db_path}: disk I/O error"


def test_sqlite_io_error_during_prune_leaves_phantoms_never_orphans(driver: Driver) -> None:
    """The row delete fails after the unlinks: the run fails with a typed error,
    only the planned victims are gone, their rows are phantoms (never an
    orphan file), and one reconcile afterwards restores agreement."""
    populate(driver, 5)
    with sqlite_fault("DELETE"), pytest.raises(DatabaseError, match="disk I/O error"):
        run_prune(driver, PrunePolicy(max_size=3000, batch_pause=0), pause=no_pause)
    assert set(driver.scan_base().images) == {uid("img-2"), uid("img-3"), uid("img-4")}
    assert set(rows(driver)) == {uid(f"img-{i}") for i in range(5)}
    result = run_reconcile(driver, ReconcilePolicy(orphan_grace=0))
    assert result.phantoms_removed == 2
    files_and_rows_agree(driver)


def test_sqlite_io_error_during_reconcile_changes_no_file(driver: Driver) -> None:
    populate(driver, 2)
    write_file(Path(driver.base_dir) / uid("orphan-1"), 10, age=DAY)
    before = data_state(driver.base_dir)
    with sqlite_fault("INSERT"), pytest.raises(DatabaseError, match="disk I/O error"):
        run_reconcile(driver, ReconcilePolicy(orphan_grace=0))
    assert data_state(driver.base_dir) == before
    assert run_reconcile(driver, ReconcilePolicy(orphan_grace=0)).orphans_adopted == 1
    files_and_rows_agree(driver)


# ------------------------------------------------------- read-only database


@pytest.fixture
def immutable() -> Iterator[Callable[[str], None]]:
    """``chattr +i`` for real (root on ext4/xfs/btrfs); undone at teardown."""
    paths: list[str] = []

    def make(path: str) -> None:
        if shutil.which("chattr") is None:
            pytest.skip("no chattr")
        proc = subprocess.run(["chattr", "+i", path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"chattr +i not possible here: {proc.stderr.strip()}")
        paths.append(path)

    yield make
    for path in paths:
        subprocess.run(["chattr", "-i", path], check=False)


def test_immutable_database_is_database_read_only_everywhere(
    tmp_path: Path, immutable: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """A db file that cannot be written (for real: ``chattr +i``): reads still
    work, every write surfaces DatabaseReadOnly, the CLI exits 1 with one line,
    and no image file is lost by reconcile (prune evicts file-first, so its
    victims become phantom rows, which is the documented crash-safe order)."""
    config = write_config(tmp_path, max_size="10GiB")
    driver = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    driver.configure()
    populate(driver, 2)
    write_file(Path(driver.base_dir) / uid("orphan-1"), 10, age=DAY)
    immutable(driver.db_path)
    before = data_state(driver.base_dir)

    assert len(driver.store.list_rows()) == 2
    with pytest.raises(DatabaseReadOnly, match="attempt to write a readonly database"):
        driver.delete_rows([uid("img-0")])
    code = cli.main(["-c", str(config), "--log-format", "console", "reconcile"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert cli.main(["-c", str(config), "status"]) == cli.EXIT_OK  # reads still fine
    capsys.readouterr()
    lines = [line for line in err.splitlines() if "read-only" in line]
    assert lines == [
        f"glance-cache-agent: {driver.db_path}: database is read-only:"
        " attempt to write a readonly database"
    ]
    assert data_state(driver.base_dir) == before


# ---------------------------------------------------------------- vanishing


@pytest.mark.parametrize("mode", [OrphanPolicy.ADOPT, OrphanPolicy.DELETE])
def test_orphan_vanishing_between_plan_and_execute(driver: Driver, mode: OrphanPolicy) -> None:
    """Reconcile variant of 'file vanishing between scan and delete': no error,
    no row adopted for a file that is gone, nothing else touched."""
    from glance_cache_agent.maintenance import execute_reconcile, plan_reconcile, take_snapshot

    populate(driver, 1)
    gone = write_file(Path(driver.base_dir) / uid("orphan-gone"), 10, age=DAY)
    kept = write_file(Path(driver.base_dir) / uid("orphan-kept"), 10, age=DAY)
    policy = ReconcilePolicy(orphan_grace=0, orphans=mode)
    plan = plan_reconcile(take_snapshot(driver), driver.scan_state("queue"), policy)
    gone.unlink()
    result = execute_reconcile(driver, plan)
    assert result.errors == []
    assert uid("orphan-gone") not in rows(driver)
    if mode is OrphanPolicy.ADOPT:
        assert result.orphans_adopted == 1 and kept.exists() and uid("orphan-kept") in rows(driver)
    else:
        assert result.orphans_removed == 1 and not kept.exists()
    assert uid("img-0") in rows(driver) and driver.is_cached(uid("img-0"))


def test_prune_victims_vanishing_mid_run_do_not_extend_the_eviction(driver: Driver) -> None:
    """Glance deletes a planned victim while prune runs: it is skipped, the run
    does not take an extra image to make up for it, and rows stay consistent."""
    from glance_cache_agent.maintenance import execute_prune, plan_prune, take_snapshot

    populate(driver, 4)
    policy = PrunePolicy(max_size=2000, batch_pause=0)
    plan = plan_prune(take_snapshot(driver), policy)
    assert [v.image_id for v in plan.victims] == [uid("img-0"), uid("img-1")]
    driver.delete_cached_image(uid("img-0"))  # as Glance's delete API would
    result = execute_prune(driver, plan, policy, pause=no_pause)
    assert result.images == [uid("img-1")] and result.skipped_images == [uid("img-0")]
    assert result.errors == []
    assert set(driver.scan_base().images) == {uid("img-2"), uid("img-3")}
    files_and_rows_agree(driver)


# --------------------------------------------------------------- clock jumps


@pytest.fixture
def live_download(driver: Driver) -> Iterator[Path]:
    """A real process holding ``incomplete/img-live`` open for writing."""
    path = Path(driver.base_dir) / "incomplete" / uid("img-live")
    proc = start_writer(path)
    yield path
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def test_forward_jump_through_every_task_never_touches_a_live_download(
    driver: Driver, live_download: Path
) -> None:
    """The wall clock leaps 30 days ahead (beyond stall_time, orphan_grace and
    max_idle) while a download is written: clean keeps it, prune and reconcile
    never look into ``incomplete/``; only really stalled things go, prune's
    idle eviction does not take the step for idleness, and orphans are adopted
    (never deleted) under the default policy."""
    populate(driver, 2)
    dead = write_file(Path(driver.base_dir) / "incomplete" / uid("img-dead"), 10)
    write_file(Path(driver.base_dir) / uid("orphan-1"), 10)  # fresh: inside grace now
    with freeze_time(at(time.time() + 30 * DAY)):
        clean = run_clean(driver, CleanPolicy(stall_time=HOUR, settle_time=0), pause=no_pause)
        recon = run_reconcile(driver, ReconcilePolicy(orphan_grace=600))
        prune = run_prune(
            driver, PrunePolicy(max_size=10**9, max_idle=DAY, batch_pause=0), pause=no_pause
        )
    assert live_download.exists() and live_download.stat().st_size == 4096
    assert not dead.exists() and (clean.stalled_removed, clean.skipped_active) == (1, 1)
    assert recon.orphans_adopted == 1 and recon.orphans_removed == 0
    # every row looks idle by the wall clock, but nothing was read for 30 days:
    # idle time stops at the newest read (tests/test_clock_jumps.py), so nothing goes
    assert prune.trigger is None and prune.images == []
    files_and_rows_agree(driver)


def test_backward_jump_never_makes_fresh_things_look_old(driver: Driver) -> None:
    """The clock steps 30 days back: every mtime and last_accessed lies in the
    future. Nothing is stalled, idle or past its grace; clean reports the
    future mtimes, and nothing at all is deleted or adopted."""
    populate(driver, 2)
    base = Path(driver.base_dir)
    write_file(base / "incomplete" / uid("img-new"), 10)
    write_file(base / "invalid" / uid("img-bad"), 10)
    write_file(base / uid("orphan-1"), 10)
    # a file Glance is downloading right now, its mtime set by the (correct) kernel clock
    future = time.time() + HOUR
    os.utime(base / "incomplete" / uid("img-new"), (future, future))
    before = data_state(driver.base_dir), rows(driver)
    with freeze_time(at(time.time() - 30 * DAY)):
        clean = run_clean(
            driver, CleanPolicy(stall_time=0, invalid_grace=HOUR, settle_time=0), pause=no_pause
        )
        recon = run_reconcile(driver, ReconcilePolicy(orphan_grace=600))
        prune = run_prune(driver, PrunePolicy(max_size=10**9, max_idle=60, batch_pause=0))
    assert (clean.stalled_removed, clean.invalid_removed, clean.skipped_future) == (0, 0, 2)
    assert (recon.orphans_adopted, recon.orphans_in_grace) == (0, 1)
    assert prune.images == [] and prune.trigger is None
    assert (data_state(driver.base_dir), rows(driver)) == before


# ------------------------------------------ CLI: cache dir missing or a file


def write_config(root: Path, max_size: str = "1KiB", cache: Path | None = None) -> Path:
    config = root / "agent.yaml"
    config.write_text(
        f"cache:\n  dir: {cache or root / 'cache'}\n  max_size: {max_size}\n"
        "clean:\n  settle_time: 0s\nprune:\n  batch_pause: 0s\nreconcile:\n  orphan_grace: 0s\n"
        f"agent:\n  runtime_dir: {root / 'run'}\n  lock_timeout: 0.2s\n"
    )
    return config


@pytest.mark.parametrize("command", ["clean", "prune", "reconcile", "list-cached"])
@pytest.mark.parametrize("shape", ["missing", "file"])
def test_cli_cache_dir_missing_or_not_a_directory(tmp_path: Path, command: str, shape: str) -> None:
    target = tmp_path / "cache"
    if shape == "file":
        target.write_text("not a cache")
    config = write_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(config), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    expected = "does not exist" if shape == "missing" else "is not a directory"
    assert lines == [f"glance-cache-agent: cache directory {target} {expected}"]
    assert proc.stdout == ""
    if shape == "file":
        assert target.read_text() == "not a cache"
    else:
        assert not target.exists()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------- daemon: transients


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def _scrape_success(samples: Samples) -> float:
    return samples[("glance_cache_scrape_success", ())]


def test_daemon_survives_a_missing_cache_dir_and_recovers_when_it_appears(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """Started on a cache dir that does not exist yet (Glance not deployed):
    the daemon starts, says why in one log line per failed run, reports
    scrape_success 0 and /healthz 503, and recovers by itself once the
    directory and database appear. It never creates the directory."""
    cache = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    agent = Agent(tmp_path, cache, notify)
    try:
        daemon = agent.start(
            tasks={
                "clean": {"enabled": False},
                "reconcile": {"enabled": False},
                "prune": {"interval": "1s"},
            }
        )
        failed = daemon.wait_log("task failed", task="prune")
        assert (
            failed["error"]
            == f"CacheDirectoryError: cache directory {cache.base_dir} does not exist"
        )
        status, body = wait_until("/healthz 503", lambda: (h := daemon.health())[0] == 503 and h)
        assert body["failing_tasks"] == ["prune"] and body["scheduler_alive"] is True
        samples = daemon.scrape()
        assert _scrape_success(samples) == 0
        assert ("glance_cache_size_bytes", ()) not in samples
        assert not os.path.lexists(cache.base_dir)

        cache.configure()  # Glance starts and creates its cache
        wait_until("/healthz 200", lambda: daemon.health()[0] == 200)
        wait_until("scrape_success 1", lambda: _scrape_success(daemon.scrape()) == 1)
        assert daemon.proc.poll() is None
    finally:
        agent.close()


def test_daemon_survives_the_db_locked_beyond_the_busy_timeout(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """Another process holds an exclusive SQLite lock far longer than the
    busy timeout: the scheduled run fails with DatabaseLocked (counted in
    task_failures_total, /healthz 503, one error line), the daemon stays up,
    and the next run after the lock is released succeeds and deletes only
    what it should."""
    cache = Driver(CacheSettings(cache_dir=str(tmp_path / "cache")))
    cache.configure()
    populate(cache, 3)
    agent = Agent(tmp_path, cache, notify)
    holder = sqlite3.connect(cache.db_path, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        daemon = agent.start(
            cache={"busy_timeout": "0.2s", "max_size": "2000B"},
            tasks={
                "clean": {"enabled": False},
                "reconcile": {"enabled": False},
                "prune": {"interval": "1s"},
            },
        )
        failed = daemon.wait_log("task failed", task="prune")
        assert failed["error"].startswith("DatabaseLocked: ") and "busy timeout" in failed["error"]
        wait_until(
            "a counted failure",
            lambda: (
                daemon.scrape()[("glance_cache_task_failures_total", (("task", "prune"),))] >= 1
            ),
        )
        assert daemon.health()[0] == 503
        assert set(cache.scan_base().images) == {uid("img-0"), uid("img-1"), uid("img-2")}

        holder.execute("ROLLBACK")
        start = daemon.log_index()
        done = daemon.wait_log("task finished", start=start, task="prune")
        assert done["pruned_images"] == 1  # img-0, the LRU one: 3000 B down to 2000 B
        wait_until("/healthz 200", lambda: daemon.health()[0] == 200)
        assert set(cache.scan_base().images) == {uid("img-1"), uid("img-2")}
        files_and_rows_agree(cache)
        assert daemon.proc.poll() is None
    finally:
        holder.close()
        agent.close()


def test_database_locked_is_typed_for_a_maintenance_run(driver: Driver) -> None:
    """In-process: the exclusive lock surfaces as DatabaseLocked, nothing deleted."""
    populate(driver, 2)
    slow = Driver(CacheSettings(cache_dir=driver.base_dir, busy_timeout=0.05))
    before = data_state(driver.base_dir)
    holder = sqlite3.connect(driver.db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseLocked):
            run_prune(slow, PrunePolicy(max_size=0, batch_pause=0), pause=no_pause)
    finally:
        holder.close()
    assert data_state(driver.base_dir) == before
