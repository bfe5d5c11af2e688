"""Clean: invalid files and stalled incomplete files, never a live download.

Contract section 5, scenarios 33-40, plus the agent's own rules (DESIGN
sections 3-4, issue 2 section 3): an optional grace for ``invalid/``, future
mtimes skipped and reported, files being written never deleted.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from freezegun import freeze_time

from glance_cache_agent.driver import Driver
from glance_cache_agent.driver.settings import DEFAULT_STALL_TIME
from glance_cache_agent.maintenance import CleanPolicy, execute_clean, plan_clean, run_clean
from tests.helpers.cache import (
    at,
    cache_image,
    disk_state,
    full_state,
    no_pause,
    rows,
    start_writer,
    uid,
    write_file,
)

DAY = 86400
HOUR = 3600
#: A fixed "now" for frozen clocks (whole seconds, so mtimes compare exactly).
T0 = 1_900_000_000




def set_mtime(path: Path, moment: int) -> None:
    """Set atime and mtime to exactly ``moment`` whole seconds."""
    os.utime(path, ns=(moment * 10**9, moment * 10**9))


def incomplete(driver: Driver, name: str) -> Path:
    return Path(driver.base_dir) / "incomplete" / name


def invalid(driver: Driver, name: str) -> Path:
    return Path(driver.base_dir) / "invalid" / name


# --------------------------------------------------------------- writer process


@pytest.fixture
def writer() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start real processes that hold a file open for writing until stdin closes."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = start_writer(path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.returncode is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ scenarios


def test_s33_invalid_removed_regardless_of_age(driver: Driver) -> None:
    fresh = write_file(invalid(driver, uid("img-fresh")), 1024)
    old = write_file(invalid(driver, uid("img-old")), 2048, age=30 * DAY)

    result = run_clean(driver, CleanPolicy(), pause=no_pause)

    assert not fresh.exists() and not old.exists()
    assert result.invalid_removed == 2
    assert result.invalid_bytes == 3072
    assert result.bytes_freed == 3072
    assert result.stalled_removed == 0
    assert sorted(result.files) == sorted([str(fresh), str(old)])


def test_s34_default_stall_time_is_one_day(driver: Driver) -> None:
    assert CleanPolicy().stall_time == DEFAULT_STALL_TIME == 86400
    stalled = write_file(incomplete(driver, uid("img-1")), 1000, age=2 * DAY)
    fresh = write_file(incomplete(driver, uid("img-2")), 500)
    almost = write_file(incomplete(driver, uid("img-3")), 500, age=DAY - HOUR)

    result = run_clean(driver, CleanPolicy(), pause=no_pause)

    assert not stalled.exists()
    assert fresh.exists() and almost.exists()
    assert (result.stalled_removed, result.stalled_bytes, result.bytes_freed) == (1, 1000, 1000)


def test_s35_stall_time_one_hour(driver: Driver) -> None:
    stalled = write_file(incomplete(driver, uid("img-1")), 700, age=DAY)
    fresh = write_file(incomplete(driver, uid("img-2")), 700)
    half_hour = write_file(incomplete(driver, uid("img-3")), 700, age=HOUR / 2)

    result = run_clean(driver, CleanPolicy(stall_time=3600), pause=no_pause)

    assert not stalled.exists()
    assert fresh.exists() and half_hour.exists()
    assert result.stalled_removed == 1
    assert result.files == [str(stalled)]


def test_s36_stall_time_zero_removes_every_file_older_than_now(driver: Driver) -> None:
    one_second = write_file(incomplete(driver, uid("img-1")))
    set_mtime(one_second, T0 - 1)
    old = write_file(incomplete(driver, uid("img-2")))
    set_mtime(old, T0 - 5 * DAY)
    same_second = write_file(incomplete(driver, uid("img-3")))
    set_mtime(same_second, T0)  # mtime == now is not "< now"

    with freeze_time(at(T0)):
        result = run_clean(driver, CleanPolicy(stall_time=0), pause=no_pause)

    assert not one_second.exists() and not old.exists()
    assert same_second.exists()
    assert result.stalled_removed == 2


def test_s37_strict_boundary_keeps_file_exactly_stall_time_old(driver: Driver) -> None:
    boundary = write_file(incomplete(driver, uid("img-edge")))
    set_mtime(boundary, T0 - 3600)
    past = write_file(incomplete(driver, uid("img-past")))
    set_mtime(past, T0 - 3601)

    with freeze_time(at(T0)):
        assert time.time() == T0
        result = run_clean(driver, CleanPolicy(stall_time=3600), pause=no_pause)

    assert boundary.exists()
    assert not past.exists()
    assert result.stalled_removed == 1


def test_s38_delete_failure_logged_skipped_and_clean_continues(
    driver: Driver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Differs from Glance: a failure deleting an ``invalid/`` file aborts Glance's
    clean; we log it, skip the file and continue in both directories."""
    bad_invalid = write_file(invalid(driver, uid("img-a")), 100)
    good_invalid = write_file(invalid(driver, uid("img-b")), 200)
    bad_stalled = write_file(incomplete(driver, uid("img-c")), 300, age=2 * DAY)
    good_stalled = write_file(incomplete(driver, uid("img-d")), 400, age=2 * DAY)
    faults = {str(bad_invalid): errno.EACCES, str(bad_stalled): errno.EIO}
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        code = faults.get(os.fspath(path))
        if code is not None:
            raise OSError(code, os.strerror(code), os.fspath(path))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    with caplog.at_level(logging.WARNING):
        result = run_clean(driver, CleanPolicy(), pause=no_pause)

    assert bad_invalid.exists() and bad_stalled.exists()
    assert not good_invalid.exists() and not good_stalled.exists()
    assert (result.invalid_removed, result.stalled_removed) == (1, 1)
    assert result.bytes_freed == 200 + 400
    assert len(result.errors) == 2
    assert any(str(bad_invalid) in e and os.strerror(errno.EACCES) in e for e in result.errors)
    assert any(str(bad_stalled) in e and os.strerror(errno.EIO) in e for e in result.errors)
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert str(bad_invalid) in logged and str(bad_stalled) in logged


def test_s39_scope_base_files_queue_and_rows_untouched(driver: Driver) -> None:
    cache_image(driver, uid("img-cached"), 1024)
    set_mtime(Path(driver.base_dir) / uid("img-cached"), T0 - 10 * DAY)
    write_file(Path(driver.base_dir) / "3f2a9c1e-0000-4000-8000-000000000001", 3000, age=10 * DAY)
    assert driver.queue_image(uid("img-queued"))
    set_mtime(Path(driver.base_dir) / "queue" / uid("img-queued"), T0 - 10 * DAY)
    write_file(invalid(driver, uid("img-x")), 10)
    write_file(incomplete(driver, uid("img-y")), 10, age=10 * DAY)
    # names that are not image ids are not the cleaner's business either
    foreign = [
        write_file(invalid(driver, "notes.txt"), 5, age=10 * DAY),
        write_file(incomplete(driver, ".hidden"), 5, age=10 * DAY),
        write_file(invalid(driver, "README"), 5, age=10 * DAY),
        write_file(incomplete(driver, "backup"), 5, age=10 * DAY),
    ]
    before = disk_state(driver.base_dir)
    rows_before = rows(driver)

    result = run_clean(driver, CleanPolicy(stall_time=0), pause=no_pause)

    after = disk_state(driver.base_dir)
    # the only new entry: Glance's clean lock file (zero bytes, kept)
    assert after.pop("glance-cache-clean")[0] == 0
    gone = set(before) - set(after)
    assert gone == {os.path.join("invalid", uid("img-x")), os.path.join("incomplete", uid("img-y"))}
    assert {k: v for k, v in before.items() if k not in gone} == after
    assert rows(driver) == rows_before
    assert all(p.exists() for p in foreign)
    assert (result.invalid_removed, result.stalled_removed) == (1, 1)


def test_s40_file_vanishing_between_scan_and_delete_is_not_an_error(driver: Driver) -> None:
    """Differs from Glance: a file renamed away mid-run (a finishing commit) made
    Glance's clean crash; we skip it and do not count it as removed."""
    gone_invalid = write_file(invalid(driver, uid("img-a")), 100)
    kept_invalid = write_file(invalid(driver, uid("img-b")), 100)
    gone_stalled = write_file(incomplete(driver, uid("img-c")), 100, age=2 * DAY)
    kept_stalled = write_file(incomplete(driver, uid("img-d")), 100, age=2 * DAY)
    policy = CleanPolicy(stall_time=3600)
    plan = plan_clean(
        driver.scan_state("invalid"), driver.scan_state("incomplete"), policy, time.time()
    )
    assert len(plan.invalid) == 2 and len(plan.stalled) == 2

    gone_invalid.unlink()
    # the "commit" renames the stalled download into place
    os.rename(gone_stalled, Path(driver.base_dir) / uid("img-c"))
    result = execute_clean(driver, plan, policy, pause=no_pause)

    assert not kept_invalid.exists() and not kept_stalled.exists()
    assert (Path(driver.base_dir) / uid("img-c")).exists()
    assert (result.invalid_removed, result.stalled_removed) == (1, 1)
    assert result.bytes_freed == 200
    assert result.errors == []


def test_s40_file_vanishing_during_settle_pause(driver: Driver) -> None:
    stalled = write_file(incomplete(driver, uid("img-a")), 100, age=2 * DAY)
    calls: list[float] = []

    def pause(seconds: float) -> None:
        calls.append(seconds)
        stalled.unlink()

    result = run_clean(driver, CleanPolicy(stall_time=3600, settle_time=1), pause=pause)

    assert calls == [1]
    assert result.stalled_removed == 0
    assert result.skipped_active == 0
    assert result.errors == []


# ---------------------------------------------------------------- agent rules


def test_invalid_grace_keeps_young_invalid_files(driver: Driver) -> None:
    young = write_file(invalid(driver, uid("img-young")))
    set_mtime(young, T0 - 600)
    edge = write_file(invalid(driver, uid("img-edge")))
    set_mtime(edge, T0 - 3600)
    old = write_file(invalid(driver, uid("img-old")))
    set_mtime(old, T0 - 7200)

    with freeze_time(at(T0)):
        result = run_clean(driver, CleanPolicy(invalid_grace=3600), pause=no_pause)

    assert young.exists()
    assert not edge.exists() and not old.exists()
    assert result.invalid_removed == 2
    assert result.invalid_in_grace == 1


def test_default_invalid_grace_is_none(driver: Driver) -> None:
    assert CleanPolicy().invalid_grace == 0
    young = write_file(invalid(driver, uid("img-young")))
    result = run_clean(driver, CleanPolicy(), pause=no_pause)
    assert not young.exists()
    assert result.invalid_in_grace == 0


def test_future_mtimes_skipped_and_reported(driver: Driver) -> None:
    future_incomplete = write_file(incomplete(driver, uid("img-a")))
    set_mtime(future_incomplete, T0 + DAY)
    future_invalid = write_file(invalid(driver, uid("img-b")))
    set_mtime(future_invalid, T0 + DAY)

    with freeze_time(at(T0)):
        result = run_clean(driver, CleanPolicy(stall_time=0, invalid_grace=60), pause=no_pause)
        dry = run_clean(driver, CleanPolicy(stall_time=0, invalid_grace=60), dry_run=True)

    assert future_incomplete.exists() and future_invalid.exists()
    assert result.skipped_future == 2 == dry.skipped_future
    assert result.stalled_removed == result.invalid_removed == 0


def test_never_deletes_file_held_open_by_a_real_writer(
    driver: Driver, writer: Callable[[Path], subprocess.Popen[str]]
) -> None:
    """Differs from Glance: Glance deletes any incomplete file older than the
    stall time, live downloads included; ours keeps a file open for writing."""
    path = incomplete(driver, uid("img-live"))
    proc = writer(path)
    two_days_ago = time.time() - 2 * DAY
    os.utime(path, (two_days_ago, two_days_ago))
    control = write_file(incomplete(driver, uid("img-dead")), 10, age=2 * DAY)

    result = run_clean(driver, CleanPolicy(stall_time=3600), pause=no_pause)

    assert path.exists()
    assert not control.exists()
    assert result.skipped_active == 1
    assert result.stalled_removed == 1
    assert str(path) not in result.files

    stop(proc)
    assert proc.returncode == 0
    assert path.stat().st_mtime == pytest.approx(two_days_ago)

    again = run_clean(driver, CleanPolicy(stall_time=3600), pause=no_pause)
    assert not path.exists()
    assert (again.stalled_removed, again.stalled_bytes, again.skipped_active) == (1, 4096, 0)


def test_clock_jump_does_not_delete_a_file_being_written(
    driver: Driver, writer: Callable[[Path], subprocess.Popen[str]]
) -> None:
    """The wall clock jumps ten days ahead (far beyond stall_time) while a
    download is in progress: its file is still kept."""
    path = incomplete(driver, uid("img-live"))
    writer(path)
    control = write_file(incomplete(driver, uid("img-dead")), 10)

    with freeze_time(at(time.time() + 10 * DAY)):
        result = run_clean(driver, CleanPolicy(stall_time=3600), pause=no_pause)

    assert path.exists()
    assert not control.exists()  # proves the jump made both look stalled
    assert result.skipped_active == 1
    assert result.stalled_removed == 1


def test_file_growing_between_observations_is_kept(driver: Driver) -> None:
    """A writer we cannot see in /proc (another host, NFS) still betrays itself
    by changing the file between the plan and the delete."""
    growing = write_file(incomplete(driver, uid("img-grow")), 100, age=2 * DAY)
    still = write_file(incomplete(driver, uid("img-still")), 100, age=2 * DAY)
    calls: list[float] = []

    def pause(seconds: float) -> None:
        calls.append(seconds)
        with open(growing, "ab") as f:
            f.write(b"more")

    result = run_clean(driver, CleanPolicy(stall_time=3600, settle_time=1), pause=pause)

    assert calls == [1]
    assert growing.exists() and growing.stat().st_size == 104
    assert not still.exists()
    assert result.skipped_active == 1
    assert result.stalled_removed == 1


def test_settle_pause_only_when_something_is_stalled(driver: Driver) -> None:
    write_file(incomplete(driver, uid("img-fresh")), 100)
    write_file(invalid(driver, uid("img-bad")), 100)
    calls: list[float] = []

    result = run_clean(driver, CleanPolicy(stall_time=3600, settle_time=1), pause=calls.append)

    assert calls == []
    assert result.invalid_removed == 1


def test_empty_cache_clean_is_a_no_op(driver: Driver) -> None:
    lock = Path(driver.base_dir) / "glance-cache-clean"
    lock.touch()  # as glance-api would have left it
    before = full_state(driver)
    result = run_clean(driver, CleanPolicy(stall_time=0), pause=no_pause)
    assert full_state(driver) == before
    assert lock.exists()
    assert result.to_dict()["invalid_removed"] == result.to_dict()["stalled_removed"] == 0


# ------------------------------------------------------------ dry run == real


def test_dry_run_changes_nothing_and_equals_real_run(driver: Driver) -> None:
    cache_image(driver, uid("img-cached"), 512)
    driver.queue_image(uid("img-q"))
    set_mtime(write_file(invalid(driver, uid("img-i1")), 100), T0 - 7200)
    set_mtime(write_file(invalid(driver, uid("img-i2")), 200), T0 - DAY)
    young_invalid = write_file(invalid(driver, uid("img-i3")), 300)
    set_mtime(young_invalid, T0 - 10)
    stalled = write_file(incomplete(driver, uid("img-s1")), 400)
    set_mtime(stalled, T0 - 2 * DAY)
    fresh = write_file(incomplete(driver, uid("img-s2")), 500)
    set_mtime(fresh, T0 - 60)
    future = write_file(incomplete(driver, uid("img-s3")), 600)
    set_mtime(future, T0 + HOUR)
    policy = CleanPolicy(stall_time=3600, invalid_grace=60)

    with freeze_time(at(T0)):
        before = full_state(driver)
        dry = run_clean(driver, policy, dry_run=True)
        assert full_state(driver) == before
        real = run_clean(driver, policy, pause=no_pause)

    assert dry.dry_run is True and real.dry_run is False
    dry_doc, real_doc = dry.to_dict(), real.to_dict()
    assert dry_doc.pop("dry_run") is True
    assert real_doc.pop("dry_run") is False
    assert dry_doc == real_doc
    assert real_doc["invalid_removed"] == 2
    assert real_doc["bytes_freed"] == 100 + 200 + 400
    assert real_doc["stalled_removed"] == 1
    assert real_doc["skipped_future"] == 1
    assert real_doc["invalid_in_grace"] == 1
    for key in ("dry_run", "invalid_removed", "stalled_removed", "bytes_freed"):
        assert key in dry.to_dict()
