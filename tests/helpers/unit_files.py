"""Helpers for tests that read systemd unit files and run ``systemd-analyze`` on them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers.tools import ci

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
SERVICE = "glance-cache-agent.service"
RUN_TEMPLATE = "glance-cache-agent-run@.service"
TIMER_TEMPLATE = "glance-cache-agent-run@.timer"
#: The binary the shipped units run; tests point it at a real one (see ``stage_units``).
SHIPPED_BINARY = "/usr/local/bin/glance-cache-agent"
#: ``systemd-analyze security`` exposure the issue allows (0.0 best, 10.0 worst).
MAX_EXPOSURE = 1.2

_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")

#: skipped without systemd-analyze, except in CI, where the test then fails
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not ci(),
    reason="systemd-analyze is not installed (.ci/run installs the systemd package)",
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, _, value = line.partition("=")
        current[key.strip()].append(value.strip())
    return sections


def stage_units(dest: Path, binary: Path, sources: list[Path] | None = None) -> Path:
    """Copy unit files into ``dest`` with the shipped ExecStart binary replaced by ``binary``.

    ``systemd-analyze verify`` fails when an ExecStart= binary does not exist, and the
    shipped units name /usr/local/bin/glance-cache-agent (the symlink an install creates),
    which a test machine does not have; the copy points at the real console script of
    this checkout instead, so verify still checks that the command line is executable.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for src in sources or sorted(UNIT_DIR.iterdir()):
        (dest / src.name).write_text(src.read_text().replace(SHIPPED_BINARY, str(binary)))
    return dest


def verify(directory: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify --man=no`` on ``unit`` (an instance name for templates)."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(directory / unit)],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=60,
    )


def exposure(directory: Path, unit: str) -> float:
    """The overall exposure level ``systemd-analyze security --offline=true`` gives ``unit``."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(directory / unit)],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = _EXPOSURE.search(result.stdout)
    assert match is not None, f"no exposure line in:\n{result.stdout}\n{result.stderr}"
    assert match.group(1) == unit.rsplit("/", 1)[-1]
    return float(match.group(2))
