"""The role run into a booted host (tests/helpers/booted_host.py) with ``ansible-playbook``.

The controller is this venv; the host is reached through the ``nsenter`` connection
plugin (tests/helpers/ansible_plugins). The agent comes as a wheel of this checkout and
its locked dependencies as a wheelhouse for the host's Python: the host has no network.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.booted_host import Host
from tests.helpers.unit_files import REPO

ANSIBLE_DIR = REPO / "ansible"
SITE = ANSIBLE_DIR / "playbooks/site.yml"
LOCK = ANSIBLE_DIR / "roles/glance_cache_agent/files/requirements.lock"
PLUGINS = Path(__file__).parent / "ansible_plugins"
BIN = Path(sys.executable).parent
HOST_NAME = "booted"
RECAP = re.compile(rf"^{HOST_NAME}\s*:\s*(.*)$", re.M)
VENV = "/opt/glance-cache-agent"
AGENT = f"{VENV}/bin/glance-cache-agent"
CONFIG = "/etc/glance-cache-agent/config.yaml"
SERVICE = "glance-cache-agent.service"


@dataclass
class Run:
    """One ``ansible-playbook`` run: exit status, output and the host's recap counts."""

    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        match = RECAP.search(self.output)
        assert match is not None, self.output[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

    def ok(self) -> Run:
        assert self.returncode == 0, self.output[-6000:]
        return self


def agent_wheel(out: Path) -> Path:
    """This checkout as a wheel (what an operator ships to the controller)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("glance_cache_agent-*.whl")
    return wheel


def wheelhouse(out: Path, python: str) -> Path:
    """The lock's wheels for the host's Python (pip checks them against the lock's hashes)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--python-version", python, "--platform", f"manylinux_2_28_{platform.machine()}",
         "-d", str(out), "-r", str(LOCK)],
        check=True, timeout=300,
    )  # fmt: skip
    return out


@dataclass
class Deployment:
    """A booted host, and the playbook inputs that deploy the agent on it."""

    host: Host
    work: Path
    role_vars: dict[str, Any]
    runs: dict[str, Run] = field(default_factory=dict)

    def __post_init__(self) -> None:
        inventory = {
            "all": {
                "hosts": {
                    HOST_NAME: {
                        "ansible_connection": "nsenter",
                        "ansible_host": str(self.host.pid),
                        "ansible_python_interpreter": "/usr/bin/python3",
                        # root already: a minimal host has no sudo
                        "ansible_become": False,
                    }
                },
                "children": {"glance_api": {"hosts": {HOST_NAME: None}}},
            }
        }
        (self.work / "hosts.yml").write_text(yaml.safe_dump(inventory))

    def converge(self, *args: str, **overrides: Any) -> Run:
        """playbooks/site.yml with the role variables (``overrides`` replace some)."""
        extra = self.work / "vars.json"
        extra.write_text(json.dumps({**self.role_vars, **overrides}))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
            "ANSIBLE_CONNECTION_PLUGINS": str(PLUGINS / "connection"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        result = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(self.work / "hosts.yml"), str(SITE),
             "-e", f"@{extra}", *args],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        output = result.stdout + result.stderr
        if result.returncode != 0:  # what the host says about the agent, for the report
            journal = self.host.run("journalctl", "--no-pager", "-n", "40", "-u", SERVICE)
            output += f"\n--- journal of {SERVICE}:\n{journal.stdout}"
        return Run(result.returncode, output)

    # ------------------------------------------------------------ the host's view

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of some properties."""
        out = self.host.check("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        """The agent's main PID; fails unless it runs (``kill 0`` would signal the
        test's own process group, which nsenter shares)."""
        pid = int(self.show(SERVICE, "MainPID")["MainPID"])
        assert pid > 1, f"{SERVICE} has no main process"
        return pid

    def http_get(self, path: str) -> tuple[int, str]:
        """GET on the agent's endpoint from inside the host (a minimal host has no curl)."""
        script = (
            "import sys, urllib.error, urllib.request\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:9742{path}', timeout=30)\n"
            "except urllib.error.HTTPError as e:\n"
            "    r = e\n"
            "print(r.status); print(r.read().decode())\n"
        )
        status, _, body = self.host.check("python3", "-c", script).partition("\n")
        return int(status), body

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the agent's /metrics, e.g. ``metric('x', 'task="prune"')``."""
        status, body = self.http_get("/metrics")
        assert status == 200
        wanted = f"{name}{{{labels}}} " if labels else f"{name} "
        (line,) = [line for line in body.splitlines() if line.startswith(wanted)]
        return float(line.split()[-1])

    def as_user(self, user: str, *argv: str, input: str | None = None) -> str:
        """Run ``argv`` inside the host as ``user`` (a name or a uid, same group)."""
        return self.host.check(
            "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv, input=input
        )

    def make_cache(self, cache_dir: str, user: str, images: dict[str, int]) -> None:
        """Glance's side: a cache with ``images`` (id -> size) written through the driver."""
        script = (
            "import json, sys\n"
            "from glance_cache_agent.driver import CacheSettings, Driver\n"
            "driver = Driver(CacheSettings(cache_dir=sys.argv[1]))\n"
            "driver.configure()\n"
            "for image_id, size in json.loads(sys.argv[2]).items():\n"
            "    with driver.open_for_write(image_id) as f:\n"
            "        f.write(b'x' * size)\n"
        )
        self.as_user(user, f"{VENV}/bin/python", "-c", script, cache_dir, json.dumps(images))
