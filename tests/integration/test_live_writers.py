"""Live downloads are recognised whatever namespace or user the writer runs as.

glance-api often runs in a container (kolla mounts the cache as a volume at
another path) or as its own user. These tests use real processes: a writer
in another mount namespace (``unshare -m`` and a bind mount of the cache at
another path), and real uids (``setpriv``) inside a private pid namespace
(``unshare -p --mount-proc``), so the processes the agent sees are exactly
the ones each test started, whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from glance_cache_agent.driver import CacheSettings, Driver, scan_writers
from glance_cache_agent.driver.openfiles import _holds_no_descriptors
from glance_cache_agent.exporter.metrics import AgentMetrics
from glance_cache_agent.maintenance import CleanPolicy, CleanResult, run_clean
from tests.helpers.cache import WRITER

IMAGE = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
HOUR = 3600
NOBODY = 65534
#: a uid nobody else uses: the "other user" glance-api would be
OTHER_UID = 4242

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unshare, setpriv)")


def age(path: Path, seconds: float) -> None:
    """Set the file's atime and mtime ``seconds`` into the past."""
    moment = os.stat(path).st_mtime - seconds
    os.utime(path, (moment, moment))


def stop(proc: subprocess.Popen[str]) -> None:
    """Let a writer close its file and exit (it waits for stdin to close)."""
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


# ------------------------------------------------------- another mount namespace


@pytest.fixture
def container_writer(driver: Driver, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A writer that sees the cache at ``tmp_path/volume`` in its own mount
    namespace, as glance-api in a kolla container does, and holds
    ``incomplete/IMAGE`` open for writing through that path."""
    volume = tmp_path / "volume"
    volume.mkdir()
    script = 'mount --bind "$1" "$2" && exec "$3" -c "$4" "$2/incomplete/$5"'
    proc = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            driver.base_dir,
            str(volume),
            sys.executable,
            WRITER,
            IMAGE,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield proc
    finally:
        if proc.returncode is None:
            stop(proc)


def _assert_really_elsewhere(proc: subprocess.Popen[str], driver: Driver) -> Path:
    """The writer is in another mount namespace and its descriptor's link names
    a path outside the cache; return the incomplete file (as we see it)."""
    assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
    assert any(link.endswith(f"/volume/incomplete/{IMAGE}") for link in links), links
    assert not any(link.startswith(driver.base_dir) for link in links), links
    path = Path(driver.base_dir, "incomplete", IMAGE)
    age(path, 2 * HOUR)
    return path


def test_clean_keeps_a_download_held_in_another_mount_namespace(
    driver: Driver, container_writer: subprocess.Popen[str]
) -> None:
    path = _assert_really_elsewhere(container_writer, driver)
    policy = CleanPolicy(stall_time=HOUR, settle_time=0)

    result = run_clean(driver, policy)

    assert path.exists()
    assert (result.stalled_removed, result.skipped_active) == (0, 1)
    stop(container_writer)  # the same file, no longer written: now it goes
    assert run_clean(driver, policy).stalled_removed == 1
    assert not path.exists()


def test_driver_clean_keeps_a_download_held_in_another_mount_namespace(
    driver: Driver, container_writer: subprocess.Popen[str]
) -> None:
    path = _assert_really_elsewhere(container_writer, driver)

    driver.clean(stall_time=HOUR)  # Glance's driver API

    assert path.exists()


# -------------------------------------------------------------- another user

#: Runs as pid 1 of a private pid namespace (root): starts a writer as
#: ``uid`` holding ``path`` open, ages the file, runs ``clean --json`` as
#: nobody, prints the CLI's exit code, stdout and stderr as one JSON line.
ORCHESTRATOR = r"""
import json, os, subprocess, sys
config, path, uid = sys.argv[1], sys.argv[2], sys.argv[3]
def as_user(u, *argv):
    return ["setpriv", f"--reuid={u}", f"--regid={u}", "--clear-groups", *argv]
writer = subprocess.Popen(
    as_user(uid, sys.executable, "-c", sys.argv[4], path),
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert writer.stdout.readline().strip() == "ready"
moment = os.stat(path).st_mtime - 7200
os.utime(path, (moment, moment))
cli = subprocess.run(
    as_user("65534", sys.executable, "-m", "glance_cache_agent.cli", "-c", config,
            "--log-format", "json", "clean", "--json"),
    capture_output=True, text=True)
writer.stdin.close()
writer.wait()
print(json.dumps({"rc": cli.returncode, "stdout": cli.stdout, "stderr": cli.stderr}))
"""

#: Opens an existing file for writing (it cannot create one in nobody's cache).
APPENDER = WRITER.replace("os.O_CREAT | os.O_TRUNC", "os.O_APPEND")


@pytest.fixture
def nobody_cache() -> Iterator[Path]:
    """A cache owned by nobody, outside root's private pytest directory."""
    root = Path(tempfile.mkdtemp(prefix="gca-live-writers-"))
    try:
        os.chmod(root, 0o755)
        cache = root / "cache"
        Driver(CacheSettings(cache_dir=str(cache))).configure()
        (root / "agent.yaml").write_text(
            f"cache:\n  dir: {cache}\n  stall_time: 1h\nclean:\n  settle_time: 0s\n"
            f"agent:\n  runtime_dir: {root / 'run'}\n"
        )
        os.chown(root, NOBODY, NOBODY)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        yield root
    finally:
        shutil.rmtree(root)


def _clean_beside_writer(root: Path, writer_uid: int) -> tuple[dict[str, object], str]:
    """Run clean as nobody while a process of ``writer_uid`` writes the file."""
    path = root / "cache" / "incomplete" / IMAGE
    path.write_bytes(b"w" * 1024)
    os.chown(path, writer_uid, writer_uid)
    proc = subprocess.run(
        [
            "unshare",
            "-p",
            "-f",
            "--mount-proc",
            sys.executable,
            "-c",
            ORCHESTRATOR,
            str(root / "agent.yaml"),
            str(path),
            str(writer_uid),
            APPENDER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "GLANCE_CACHE_AGENT_CONFIG"},
    )
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["rc"] == 0, outcome["stderr"]
    return json.loads(outcome["stdout"]), outcome["stderr"]


def test_a_writer_of_our_own_uid_is_seen_and_kept(nobody_cache: Path) -> None:
    """The control: same uid, dumpable. Only pid 1 (root) is uninspectable."""
    document, _ = _clean_beside_writer(nobody_cache, NOBODY)

    assert (document["stalled_removed"], document["skipped_active"]) == (0, 1)
    assert document["uninspectable_processes"] == 1
    assert (nobody_cache / "cache" / "incomplete" / IMAGE).exists()


def test_a_writer_of_another_uid_is_counted_as_uninspectable(nobody_cache: Path) -> None:
    """As nobody the agent cannot see another user's writer: it says so in
    the JSON result and the log line (and, blind, removes the file)."""
    document, stderr = _clean_beside_writer(nobody_cache, OTHER_UID)

    assert document["uninspectable_processes"] == 2  # pid 1 and the writer
    assert document["stalled_removed"] == 1  # the limit the count warns about
    # journald-style "<6>" priority prefix, then one JSON document per line
    summary = [json.loads(line[line.index("{") :]) for line in stderr.splitlines() if "{" in line]
    summary = [entry for entry in summary if entry.get("task") == "clean"]
    assert summary and summary[-1]["uninspectable_processes"] == 2, stderr


# --------------------------------------------------------------- small parts


def test_kernel_threads_and_vanished_processes_hold_no_descriptors() -> None:
    if not Path("/proc/2/stat").read_text().startswith("2 (kthreadd)"):
        pytest.skip("not in the initial pid namespace")
    assert _holds_no_descriptors("2")
    assert not _holds_no_descriptors(str(os.getpid()))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert _holds_no_descriptors(gone.stdout.strip())


def test_our_own_writer_is_seen(tmp_path: Path) -> None:
    """Our own process is inspected too (a download in this process is live)."""
    path = tmp_path / IMAGE
    with open(path, "wb") as handle:
        st = os.fstat(handle.fileno())
        assert scan_writers({(st.st_dev, st.st_ino)}).busy == {(st.st_dev, st.st_ino)}
    assert scan_writers({(st.st_dev, st.st_ino)}).busy == frozenset()


def test_the_gauge_follows_the_last_clean() -> None:
    metrics = AgentMetrics(["clean"])
    metrics.observe_task("clean", "adhoc", 0.1, CleanResult(False, uninspectable_processes=3))
    assert _gauge(metrics) == 3
    metrics.observe_task("clean", "adhoc", 0.1, CleanResult(True, uninspectable_processes=0))
    assert _gauge(metrics) == 0


def _gauge(metrics: AgentMetrics) -> float:
    for family in metrics.collect():
        if family.name == "glance_cache_uninspectable_processes":
            return float(family.samples[0].value)
    raise AssertionError("glance_cache_uninspectable_processes missing")
