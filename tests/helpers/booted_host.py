"""A booted Debian host for the deployment tests: debootstrap, systemd-nspawn, nsenter.

The rootfs is built once per suite and package list and kept under /var/tmp (reused by
later sessions); every session boots a throw-away overlay of it, so the cached tree
never changes. The container has no network (``--private-network``): what a host would
fetch from its mirrors comes from a local apt repository inside the rootfs (the .debs
of ``REPO_PACKAGES``, downloaded at build time, offered but not installed) and from a
wheelhouse the test hands to the role.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.tools import unavailable

MIRROR = os.environ.get("GLANCE_CACHE_AGENT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: A minimal install: debootstrap's minbase (Essential + apt) with systemd as init, and
#: python3, the one thing Ansible needs on a managed host.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3")
#: What the host's mirror offers beyond that: the role installs what it needs of these
#: (python3-apt is what Ansible's apt module installs first); cron is Glance's state.
REPO_PACKAGES = ("python3-venv", "python3-packaging", "python3-apt", "cron")
#: Bumped when the recipe below changes, so an old cached rootfs is not reused.
RECIPE = "2"
CACHE_ROOT = Path(os.environ.get("GLANCE_CACHE_AGENT_ROOTFS_CACHE", "/var/tmp"))
LOCAL_REPO = "var/local/glance-cache-agent-test-repo"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb", "mount")


def missing_tools() -> list[str]:
    """The host tools a booted-host test needs that are not installed (besides root)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_host() -> None:
    """Skip without the tools (or root); never skip in CI, where .ci/run installs them."""
    missing = missing_tools()
    reason = ""
    if os.geteuid() != 0:
        reason = "booting a host with systemd-nspawn needs root"
    elif missing:
        reason = f"{', '.join(missing)} not installed (packages systemd-container, debootstrap)"
    if reason:
        unavailable(reason, "the booted-host tests")


def rootfs(suite: str) -> Path:
    """The cached rootfs of ``suite`` (built on first use: about a minute)."""
    key = hashlib.sha256(
        "\n".join([RECIPE, suite, MIRROR, *BASE_PACKAGES, *REPO_PACKAGES]).encode()
    ).hexdigest()[:12]
    path = CACHE_ROOT / f"glance-cache-agent-rootfs-{suite}-{key}"
    if (path / ".complete").exists():
        return path
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _build(suite, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / ".complete").touch()
    try:
        partial.rename(path)
    except OSError:  # another session finished first: use its copy
        shutil.rmtree(partial, ignore_errors=True)
    return path


def _run(*argv: str, timeout: float = 600) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}\n{result.stderr[-3000:]}")


def _build(suite: str, target: Path) -> None:
    """debootstrap, then a local apt repository of ``REPO_PACKAGES`` inside the tree."""
    include = ",".join(BASE_PACKAGES)
    _run("debootstrap", "--variant=minbase", f"--include={include}", suite, str(target), MIRROR)
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    chroot = ("chroot", str(target), "/usr/bin/env", f"PATH={PATH}", "LC_ALL=C")
    _run(*chroot, "apt-get", "clean")
    _run(*chroot, "apt-get", "update", "-q")
    _run(*chroot, "apt-get", "install", "-q", "-y", "--download-only", "--no-install-recommends",
         *REPO_PACKAGES)  # fmt: skip
    repo = target / LOCAL_REPO
    repo.mkdir(parents=True)
    for deb in (target / "var/cache/apt/archives").glob("*.deb"):
        shutil.move(deb, repo / deb.name)
    (repo / "Packages").write_text("\n".join(_stanza(deb) for deb in sorted(repo.glob("*.deb"))))
    (target / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:/{LOCAL_REPO} ./\n")
    for lists in (target / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    _run(*chroot, "apt-get", "update", "-q")
    (target / "etc/resolv.conf").unlink()


def _stanza(deb: Path) -> str:
    """The deb's ``Packages`` entry (what dpkg-scanpackages writes, without dpkg-dev)."""
    control = subprocess.run(
        ["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True
    ).stdout.rstrip("\n")
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    return f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {digest}\n"


@dataclass
class Host:
    """A booted container: ``pid`` is its PID 1 (systemd) as the host sees it."""

    name: str
    pid: int
    root: Path

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces), as root."""
        # a session of its own: nothing run inside may signal the test's process group
        return subprocess.run(
            self.enter(*argv), input=input, capture_output=True, text=True, timeout=timeout,
            env=self.env(), start_new_session=True,
        )  # fmt: skip

    def check(self, *argv: str, input: str | None = None, timeout: float = 120) -> str:
        """``run`` that must succeed; its stdout."""
        result = self.run(*argv, input=input, timeout=timeout)
        assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stderr}"
        return result.stdout

    def enter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-a", *argv]

    @staticmethod
    def env() -> dict[str, str]:
        return {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    return found


def _init_pid(nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    """systemd, once nspawn has started it as the container's PID 1."""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {nspawn.returncode}")
        for child in _children(nspawn.pid):
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
        time.sleep(0.1)
    raise RuntimeError("the container's systemd did not start")


@contextlib.contextmanager
def booted(base: Path, work: Path, name: str, boot_timeout: float = 180) -> Iterator[Host]:
    """Boot an overlay of ``base`` (changes go to ``work``); power it off afterwards."""
    upper, scratch, merged = work / "upper", work / "work", work / "root"
    for directory in (upper, scratch, merged):
        directory.mkdir(parents=True)
    _run("mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={upper},workdir={scratch}", str(merged))  # fmt: skip
    log = (work / "console.log").open("wb")
    nspawn: subprocess.Popen[bytes] | None = None
    try:
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--boot", "--quiet",
             "--private-network", "--console=passive", f"--machine={name}",
             f"--directory={merged}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + boot_timeout
        host = Host(name, _init_pid(nspawn, deadline), merged)
        _wait_until_up(host, deadline)
        yield host
    finally:
        if nspawn is not None:
            _power_off(nspawn)
        log.close()
        _run("umount", str(merged))


def _wait_until_up(host: Host, deadline: float) -> None:
    """Boot finished: ``running``, or ``degraded`` (a unit a container cannot run)."""
    while True:
        left = max(deadline - time.monotonic(), 1)
        state = host.run("systemctl", "is-system-running", "--wait", timeout=left)
        if state.stdout.strip() in ("running", "degraded"):
            return
        # systemd has not opened its bus yet: ask again
        if "Failed to connect to" not in state.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"boot failed: {state.stdout}{state.stderr}")
        time.sleep(0.2)


def _power_off(nspawn: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes nspawn shut the container down cleanly; SIGKILL if that hangs."""
    if nspawn.poll() is None:
        nspawn.terminate()
        try:
            nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=30)
