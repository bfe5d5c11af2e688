"""No lock file is ever opened through a symlink, even by root.

The cache directory (Glance's ``glance-cache-*`` lock files) and the agent's
runtime directory (``maintenance.lock``) may belong to glance-api's user
while ``sudo glance-cache-agent prune`` runs as root. Whatever that user
plants there (a symlink to a file elsewhere, a dangling symlink, a hard link,
a fifo, a symlinked runtime directory), the command fails with one message
naming the lock file, exit 1, and the file elsewhere is untouched: same
bytes, mode, owner and mtime, and nothing is created at a dangling target.
The CLI runs as a real subprocess, as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from glance_cache_agent.driver import CacheSettings, Driver, UnsafeLockFile
from glance_cache_agent.service.locks import LOCK_NAME

#: the uid of "the glance user" who owns the directories and plants links
GLANCE_UID = 4242

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the threat is root following links")

CONFIG = """\
cache:
  dir: {cache}
agent:
  runtime_dir: {run}
  lock_timeout: 0.2s
  glance_lock_timeout: 0.2s
"""


@dataclass
class Setup:
    """A cache and runtime dir owned by the glance user, and a victim file."""

    cache: Path
    run: Path
    config: Path
    victim: Path

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "GLANCE_CACHE_AGENT_CONFIG"}
        argv = [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(self.config), command]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    cache, run = tmp_path / "cache", tmp_path / "run"
    Driver(CacheSettings(cache_dir=str(cache))).configure()
    run.mkdir()
    for directory in (cache, run):
        os.chown(directory, GLANCE_UID, GLANCE_UID)
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG.format(cache=cache, run=run))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious: root's file elsewhere on the host\n")
    os.chmod(victim, 0o600)
    os.utime(victim, (1_700_000_000, 1_700_000_000))
    return Setup(cache, run, config, victim)


def snapshot(path: Path) -> tuple[object, ...]:
    st = os.stat(path)
    return (path.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink)


def assert_refused(proc: subprocess.CompletedProcess[str], lock_file: Path, reason: str) -> None:
    """Exit 1 and one error line naming the lock file and why (log lines aside)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("glance-cache-agent:")]
    assert len(errors) == 1, proc.stderr
    assert str(lock_file) in errors[0] and reason in errors[0], errors[0]


# ------------------------------------------------------- Glance's oslo lock files


@pytest.mark.parametrize(
    ("command", "lock"), [("clean", "glance-cache-clean"), ("prune", "glance-cache-prune")]
)
def test_glance_lock_symlinked_to_a_file_elsewhere(setup: Setup, command: str, lock: str) -> None:
    link = setup.cache / lock
    link.symlink_to(setup.victim)
    before = snapshot(setup.victim)

    proc = setup.cli(command)

    assert_refused(proc, link, "symbolic link")
    assert snapshot(setup.victim) == before


def test_glance_lock_dangling_symlink_creates_nothing(setup: Setup) -> None:
    target = setup.victim.with_name("created-by-root")
    link = setup.cache / "glance-cache-prune"
    link.symlink_to(target)

    assert_refused(setup.cli("prune"), link, "symbolic link")
    assert not os.path.lexists(target)


def test_glance_lock_fifo_is_refused_without_hanging(setup: Setup) -> None:
    fifo = setup.cache / "glance-cache-clean"
    os.mkfifo(fifo)

    assert_refused(setup.cli("clean"), fifo, "not a regular file")


def test_db_init_lock_symlink_is_refused(setup: Setup) -> None:
    """Glance's ``image_cache_db_init`` lock, taken by ``initialize_db``."""
    link = setup.cache / "image_cache_db_init"
    link.unlink()  # configure() made it; the glance user replaces it
    link.symlink_to(setup.victim)
    before = snapshot(setup.victim)

    with pytest.raises(UnsafeLockFile, match="symbolic link") as caught:
        Driver(CacheSettings(cache_dir=str(setup.cache))).initialize_db()

    assert caught.value.path == str(link)
    assert snapshot(setup.victim) == before


# ------------------------------------------------------ the agent's maintenance lock


def test_maintenance_lock_symlinked_to_a_file_elsewhere_is_not_emptied(setup: Setup) -> None:
    link = setup.run / LOCK_NAME
    link.symlink_to(setup.victim)
    before = snapshot(setup.victim)

    assert_refused(setup.cli("prune"), link, "symbolic link")
    assert snapshot(setup.victim) == before


def test_maintenance_lock_dangling_symlink_creates_nothing(setup: Setup) -> None:
    target = setup.victim.with_name("created-by-root")
    link = setup.run / LOCK_NAME
    link.symlink_to(target)

    assert_refused(setup.cli("prune"), link, "symbolic link")
    assert not os.path.lexists(target)


def test_maintenance_lock_hard_link_to_a_file_elsewhere_is_not_emptied(setup: Setup) -> None:
    """A hard link is a regular file, but one with a second name elsewhere."""
    os.chown(setup.victim, GLANCE_UID, GLANCE_UID)  # protected_hardlinks lets its owner link it
    os.link(setup.victim, setup.run / LOCK_NAME)
    before = snapshot(setup.victim)

    assert_refused(setup.cli("prune"), setup.run / LOCK_NAME, "2 hard links")
    assert snapshot(setup.victim) == before


def test_symlinked_runtime_dir_is_refused(setup: Setup, tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    setup.run.rmdir()
    setup.run.symlink_to(elsewhere)

    assert_refused(setup.cli("prune"), setup.run / LOCK_NAME, "is a symbolic link")
    assert not os.path.lexists(elsewhere / LOCK_NAME)


def test_maintenance_lock_root_creates_goes_to_the_directory_owner(setup: Setup) -> None:
    """So the daemon, running as the directory's owner, can still take it."""
    assert setup.cli("prune").returncode == 0

    st = os.stat(setup.run / LOCK_NAME)
    assert (st.st_uid, st.st_gid) == (GLANCE_UID, GLANCE_UID)
