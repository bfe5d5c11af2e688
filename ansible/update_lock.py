"""Write the role's lock of the agent's runtime dependencies: pinned, with sha256 hashes.

    python3 ansible/update_lock.py            # (make lock) needs the package index

The role installs ``roles/glance_cache_agent/files/requirements.lock`` with
``pip install --require-hashes``, so every node of a fleet runs the same versions of
the same files. pip resolves pyproject.toml's ``dependencies`` (with this Python);
then ``pip download`` fetches each pinned version's file for every supported Python
and platform, and their sha256 go into the lock. Only pip is used: no extra tool.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "ansible/roles/glance_cache_agent/files/requirements.lock"
#: Pythons the role supports (requires-python >= 3.11) and the hosts' platforms.
PYTHONS = ("3.11", "3.12", "3.13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
HEADER = (
    "# Runtime dependencies of glance-cache-agent, pinned with their files' hashes.\n"
    "# Generated from pyproject.toml by ansible/update_lock.py (make lock): do not edit.\n"
)


def _pip(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=True
    ).stdout


def resolve(dependencies: list[str]) -> dict[str, str]:
    """Name -> version of the dependencies and everything they pull in."""
    report = json.loads(
        _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
             *dependencies)  # fmt: skip
    )
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in report["install"]
    }


def hashes(pins: dict[str, str]) -> dict[str, set[str]]:
    """Name -> sha256 of every file pip picks for the supported Pythons and platforms."""
    found: dict[str, set[str]] = {name: set() for name in pins}
    requirements = [f"{name}=={version}" for name, version in pins.items()]
    with tempfile.TemporaryDirectory() as tmp:
        for python in PYTHONS:
            for platform in PLATFORMS:
                _pip("download", "--quiet", "--no-deps", "--only-binary", ":all:",
                     "--python-version", python, "--platform", platform, "-d", tmp,
                     *requirements)  # fmt: skip
        for path in Path(tmp).iterdir():
            name = path.name.split("-")[0].lower().replace("_", "-")
            found[name].add(hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def render(pins: dict[str, str], digests: dict[str, set[str]]) -> str:
    entries = []
    for name in sorted(pins):
        lines = [f"{name}=={pins[name]}"] + [f"--hash=sha256:{d}" for d in sorted(digests[name])]
        entries.append(" \\\n    ".join(lines))
    return HEADER + "\n".join(entries) + "\n"


def main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = resolve(project["dependencies"])
    LOCK.write_text(render(pins, hashes(pins)))
    print(f"{LOCK.relative_to(REPO)}: {len(pins)} packages")


if __name__ == "__main__":
    main()
