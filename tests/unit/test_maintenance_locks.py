"""Maintenance takes Glance's own oslo lock files, held by real processes.

oslo.concurrency (fasteners) holds ``fcntl.lockf`` on ``<lock_path>/<name>``;
the holder here is a separate Python process doing exactly that, so the
exclusion tested is the one glance-api's ``POST /v2/cache/{prune,clean}``
would see. Lock files are never deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from glance_cache_agent.driver import Driver, LockTimeout, external_lock
from glance_cache_agent.maintenance import (
    CleanPolicy,
    PrunePolicy,
    ReconcilePolicy,
    run_clean,
    run_prune,
    run_reconcile,
)
from tests.helpers.cache import cache_image, full_state, no_pause, uid, write_file

KIB = 1024
DAY = 86400
ORPHAN = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"

HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(3)
sys.exit(0)
"""



class Holder:
    """A separate process holding ``lockf`` on one file until released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def release(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def hold() -> Iterator[Callable[[Path], Holder]]:
    holders: list[Holder] = []

    def start(path: Path) -> Holder:
        holder = Holder(path)
        holders.append(holder)
        return holder

    yield start
    for holder in holders:
        holder.release()


def lock_is_held(path: Path) -> bool:
    """Ask another process whether ``lockf`` on ``path`` is taken."""
    code = subprocess.run([sys.executable, "-c", PROBE, str(path)], check=False).returncode
    assert code in (0, 3)
    return code == 3


def messy_cache(driver: Driver) -> None:
    """Something for every operation to do."""
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        cache_image(driver, image_id, KIB)
    Path(driver.base_dir, uid("img-c")).unlink()  # phantom
    orphan = write_file(Path(driver.base_dir) / ORPHAN, 500)
    os.utime(orphan, (1_600_000_000, 1_600_000_000))
    write_file(Path(driver.base_dir) / "invalid" / uid("img-i"), 100)
    write_file(Path(driver.base_dir) / "incomplete" / uid("img-s"), 100, age=2 * DAY)
    for name in ("glance-cache-prune", "glance-cache-clean"):
        Path(driver.base_dir, name).touch()


PRUNE = PrunePolicy(max_size=KIB, batch_pause=0)
CLEAN = CleanPolicy(stall_time=3600, settle_time=0)
RECONCILE = ReconcilePolicy(orphan_grace=0)


def prune(driver: Driver, timeout: float | None) -> object:
    return run_prune(driver, PRUNE, lock_timeout=timeout, pause=no_pause)


def clean(driver: Driver, timeout: float | None) -> object:
    return run_clean(driver, CLEAN, lock_timeout=timeout, pause=no_pause)


def reconcile(driver: Driver, timeout: float | None) -> object:
    return run_reconcile(driver, RECONCILE, lock_timeout=timeout)


# ------------------------------------------------------------------- blocking


@pytest.mark.parametrize(
    ("operation", "lock_name"),
    [
        (prune, "glance-cache-prune"),
        (clean, "glance-cache-clean"),
        (reconcile, "glance-cache-prune"),
        (reconcile, "glance-cache-clean"),
    ],
    ids=["prune", "clean", "reconcile-vs-prune", "reconcile-vs-clean"],
)
def test_held_lock_blocks_and_changes_nothing_then_release_lets_it_run(
    driver: Driver,
    hold: Callable[[Path], Holder],
    operation: Callable[[Driver, float | None], object],
    lock_name: str,
) -> None:
    messy_cache(driver)
    lock = Path(driver.base_dir, lock_name)
    holder = hold(lock)
    before = full_state(driver)

    with pytest.raises(LockTimeout) as caught:
        operation(driver, 0.2)

    assert caught.value.path == str(lock)
    assert full_state(driver) == before
    assert lock.exists()

    holder.release()
    result = operation(driver, 0.2)

    assert full_state(driver) != before
    assert result.to_dict()["dry_run"] is False  # type: ignore[attr-defined]
    assert lock.exists()
    assert not lock_is_held(lock)  # released after the run


@pytest.mark.parametrize(
    ("operation", "other_lock"),
    [(prune, "glance-cache-clean"), (clean, "glance-cache-prune")],
    ids=["prune-ignores-clean-lock", "clean-ignores-prune-lock"],
)
def test_prune_and_clean_do_not_take_each_others_lock(
    driver: Driver,
    hold: Callable[[Path], Holder],
    operation: Callable[[Driver, float | None], object],
    other_lock: str,
) -> None:
    messy_cache(driver)
    hold(Path(driver.base_dir, other_lock))
    before = full_state(driver)

    operation(driver, 0.2)

    assert full_state(driver) != before


# ---------------------------------------------------------- really lockf-held


def test_prune_holds_lockf_while_it_evicts(driver: Driver) -> None:
    for image_id in (uid("img-a"), uid("img-b"), uid("img-c")):
        cache_image(driver, image_id, KIB)
    lock = Path(driver.base_dir, "glance-cache-prune")
    seen: list[bool] = []

    run_prune(
        driver,
        PrunePolicy(max_size=KIB, batch_size=1, batch_pause=0.01),
        pause=lambda _s: seen.append(lock_is_held(lock)),
    )

    assert seen == [True]
    assert not lock_is_held(lock)
    assert lock.exists()


def test_clean_holds_lockf_while_it_cleans(driver: Driver) -> None:
    write_file(Path(driver.base_dir) / "incomplete" / uid("img-s"), 100, age=2 * DAY)
    lock = Path(driver.base_dir, "glance-cache-clean")
    seen: list[bool] = []

    result = run_clean(
        driver,
        CleanPolicy(stall_time=3600, settle_time=1),
        pause=lambda _s: seen.append(lock_is_held(lock)),
    )

    assert seen == [True]
    assert result.stalled_removed == 1
    assert not lock_is_held(lock)


def test_reconcile_holds_both_locks_while_it_writes(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan = write_file(Path(driver.base_dir) / ORPHAN, 500)
    os.utime(orphan, (1_600_000_000, 1_600_000_000))
    locks = [Path(driver.base_dir, n) for n in ("glance-cache-prune", "glance-cache-clean")]
    seen: list[list[bool]] = []
    real_adopt = driver.adopt_files

    def spy(infos: object) -> int:
        seen.append([lock_is_held(lock) for lock in locks])
        return real_adopt(infos)  # type: ignore[arg-type]

    monkeypatch.setattr(driver, "adopt_files", spy)
    result = run_reconcile(driver, ReconcilePolicy(orphan_grace=0))

    assert seen == [[True, True]]
    assert result.orphans_adopted == 1
    assert [lock_is_held(lock) for lock in locks] == [False, False]


# ------------------------------------------------------------ lock files kept


def test_lock_files_are_never_deleted(driver: Driver) -> None:
    messy_cache(driver)
    locks = [
        Path(driver.base_dir, n)
        for n in ("image_cache_db_init", "glance-cache-prune", "glance-cache-clean")
    ]
    inodes = [lock.stat().st_ino for lock in locks]

    reconcile(driver, None)
    prune(driver, None)
    clean(driver, None)
    driver.delete_all_cached_images()
    run_prune(driver, PrunePolicy(max_size=0), pause=no_pause)

    assert [lock.stat().st_ino for lock in locks] == inodes
    assert all(lock.stat().st_size == 0 for lock in locks)


# ------------------------------------------------------------- lock_path


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "locks"


@pytest.mark.parametrize(
    ("operation", "lock_name"),
    [
        (prune, "glance-cache-prune"),
        (clean, "glance-cache-clean"),
        (reconcile, "glance-cache-clean"),
    ],
    ids=["prune", "clean", "reconcile"],
)
def test_lock_path_setting_is_honoured(
    make_driver: Callable[..., Driver],
    lock_dir: Path,
    hold: Callable[[Path], Holder],
    operation: Callable[[Driver, float | None], object],
    lock_name: str,
) -> None:
    driver = make_driver(lock_path=str(lock_dir))
    messy_cache(driver)
    assert (lock_dir / "image_cache_db_init").exists()

    # a lock in the cache directory is not the one that counts any more ...
    in_cache_dir = hold(Path(driver.base_dir, lock_name))
    # ... the one in lock_path is
    in_lock_path = hold(lock_dir / lock_name)
    before = full_state(driver)
    with pytest.raises(LockTimeout) as caught:
        operation(driver, 0.2)
    assert caught.value.path == str(lock_dir / lock_name)
    assert full_state(driver) == before

    in_lock_path.release()
    operation(driver, 0.2)  # the cache-dir holder does not block

    assert full_state(driver) != before
    assert (lock_dir / lock_name).exists()
    assert lock_is_held(Path(driver.base_dir, lock_name))  # still held by the other process
    in_cache_dir.release()


def test_a_lock_file_created_as_root_belongs_to_the_lock_dirs_owner(tmp_path: Path) -> None:
    """glance-api (the cache owner) must be able to open a lock file we created.

    CI runs as root, which is exactly the case: the file would otherwise be
    root's, mode 0644, and Glance's own prune/clean lock could not open it.
    """
    if os.geteuid() != 0:
        pytest.skip("only root creates files for other users")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    os.chown(lock_dir, 65534, 65534)
    with external_lock(str(lock_dir), "glance-cache-prune", timeout=0):
        pass
    st = (lock_dir / "glance-cache-prune").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    os.chown(lock_dir / "glance-cache-prune", 0, 0)  # an existing file is left as it is
    with external_lock(str(lock_dir), "glance-cache-prune", timeout=0):
        pass
    assert (lock_dir / "glance-cache-prune").stat().st_uid == 0
