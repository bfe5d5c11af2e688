"""The shipped systemd units (systemd/): real ``systemd-analyze verify`` and ``security``,
plus the directives the agent's behaviour depends on."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from glance_cache_agent.cli import build_parser
from glance_cache_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, CacheConfig
from tests.helpers.unit_files import (
    MAX_EXPOSURE,
    RUN_TEMPLATE,
    SERVICE,
    SHIPPED_BINARY,
    TIMER_TEMPLATE,
    UNIT_DIR,
    exposure,
    needs_systemd_analyze,
    parse_unit,
    stage_units,
    verify,
)

TASKS = ("clean", "prune", "reconcile")
AGENT_BINARY = Path(sys.executable).parent / "glance-cache-agent"
#: Directives scored by ``systemd-analyze security`` or otherwise confining the process;
#: the ad-hoc unit must be at least as strict as the daemon on each of them.
HARDENING = (
    "User", "Group", "UMask", "ProtectSystem", "ReadWritePaths", "ProtectHome", "PrivateTmp",
    "PrivateDevices", "PrivateMounts", "NoNewPrivileges",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
    "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber", "CapabilityBoundingSet", "AmbientCapabilities", "RemoveIPC",
    "DevicePolicy", "KeyringMode",
)  # fmt: skip


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNIT_DIR / name).read_text())


def _one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: expected exactly one value, got {values}"
    return values[0]


def _seconds(value: str) -> float:
    """A systemd time span (``3min``, ``90s``, ``1min 30s``, ``60``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert AGENT_BINARY.exists(), f"{AGENT_BINARY}: install the package first (make install)"
    return stage_units(tmp_path_factory.mktemp("units"), AGENT_BINARY)


# ------------------------------------------------------------ systemd-analyze


@needs_systemd_analyze
@pytest.mark.parametrize(
    "unit",
    [
        SERVICE,
        *(f"glance-cache-agent-run@{t}.service" for t in TASKS),
        "glance-cache-agent-run@prune.timer",
    ],
)
def test_systemd_analyze_verify(staged: Path, unit: str) -> None:
    result = verify(staged, unit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


@needs_systemd_analyze
@pytest.mark.skipif(os.path.exists(SHIPPED_BINARY), reason=f"{SHIPPED_BINARY} exists here")
def test_verify_checks_that_the_binary_exists() -> None:
    """Why the tests stage copies: verify refuses the shipped unit where the binary is missing."""
    result = verify(UNIT_DIR, SERVICE)
    assert result.returncode != 0
    assert f"Command {SHIPPED_BINARY} is not executable" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [SERVICE, "glance-cache-agent-run@prune.service"])
def test_security_exposure(staged: Path, unit: str) -> None:
    level = exposure(staged, unit)
    assert level <= MAX_EXPOSURE, f"{unit}: exposure {level} > {MAX_EXPOSURE}"


@needs_systemd_analyze
def test_security_exposure_notices_a_weaker_unit(staged: Path, tmp_path: Path) -> None:
    """The parsed number moves with the unit: dropping hardening raises it past the limit."""
    text = (staged / SERVICE).read_text()
    weak = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("Protect", "Private", "SystemCall"))
    )
    (tmp_path / SERVICE).write_text(weak)
    assert exposure(tmp_path, SERVICE) > MAX_EXPOSURE


# ------------------------------------------------------------ the daemon unit


def test_service_runs_the_daemon_under_notify_and_watchdog() -> None:
    service = _unit(SERVICE)["Service"]
    assert _one(service, "Type") == "notify"
    assert _seconds(_one(service, "WatchdogSec")) >= 10  # the supervisor pings every second
    assert _one(service, "Restart") == "on-failure"
    assert "78" in _one(service, "RestartPreventExitStatus").split()
    # validate first (a bad config fails the reload), then SIGHUP without procps' /bin/kill
    assert service["ExecReload"] == [
        f"{SHIPPED_BINARY} --config {DEFAULT_CONFIG_PATH} check-config --json",
        """/bin/sh -c 'kill -HUP "$$1"' sh $MAINPID""",
    ]
    assert _one(service, "User") == "glance"
    assert _one(service, "Group") == "glance"
    assert _one(service, "SyslogIdentifier") == "glance-cache-agent"
    assert "ProcSubset" not in service  # it would hide /proc/stat from the process metrics
    assert _unit(SERVICE)["Install"]["WantedBy"] == ["multi-user.target"]


def test_service_stop_timeout_covers_a_task_reaching_its_safe_point() -> None:
    """A task blocked on Glance's lock is the longest wait after SIGTERM."""
    agent = AgentConfig()
    stop = _seconds(_one(_unit(SERVICE)["Service"], "TimeoutStopSec"))
    assert stop >= 2 * agent.glance_lock_timeout


def test_only_the_cache_directory_is_writable() -> None:
    for name in (SERVICE, RUN_TEMPLATE):
        service = _unit(name)["Service"]
        assert _one(service, "ProtectSystem") == "strict"
        assert service["ReadWritePaths"] == [CacheConfig().dir], name


def test_both_units_share_the_runtime_directory_and_keep_it() -> None:
    """The maintenance lock lives in agent.runtime_dir; neither unit may delete it on stop."""
    runtime_dir = AgentConfig().runtime_dir
    assert runtime_dir.startswith("/run/")
    for name in (SERVICE, RUN_TEMPLATE):
        service = _unit(name)["Service"]
        assert _one(service, "RuntimeDirectory") == runtime_dir.removeprefix("/run/"), name
        assert _one(service, "RuntimeDirectoryPreserve") == "yes", name


@pytest.mark.parametrize("name", [SERVICE, *(f"{RUN_TEMPLATE}:{t}" for t in TASKS)])
def test_exec_start_is_a_valid_agent_command_line(name: str) -> None:
    unit, _, instance = name.partition(":")
    argv = shlex.split(_one(_unit(unit)["Service"], "ExecStart").replace("%i", instance))
    assert argv[0] == SHIPPED_BINARY
    args = build_parser().parse_args(argv[1:])
    assert args.config == DEFAULT_CONFIG_PATH
    assert args.command == (instance or "run")
    assert not getattr(args, "dry_run", False)


# ------------------------------------------------------------ the ad-hoc template


def test_run_template_is_a_oneshot_at_least_as_hardened_as_the_daemon() -> None:
    daemon = _unit(SERVICE)["Service"]
    oneshot = _unit(RUN_TEMPLATE)["Service"]
    assert _one(oneshot, "Type") == "oneshot"
    assert "Restart" not in oneshot
    assert _one(oneshot, "SyslogIdentifier") == "glance-cache-agent-run"
    different = {
        key: (daemon.get(key), oneshot.get(key))
        for key in HARDENING
        if daemon.get(key) != oneshot.get(key)
    }
    assert different == {}


@pytest.mark.parametrize("name", [SERVICE, RUN_TEMPLATE])
def test_both_units_can_reach_a_centralized_database(name: str) -> None:
    """centralized_db: a run, like the daemon, talks to Glance's database over TCP or its
    unix socket, so neither unit may cut the network off."""
    unit = _unit(name)["Service"]
    families = set(_one(unit, "RestrictAddressFamilies").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families
    assert "PrivateNetwork" not in unit
    assert "IPAddressDeny" not in unit  # an operator's drop-in adds it with the db's address
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):  # /run/postgresql, /run/mysqld
        assert key not in unit


def _exec_condition(instance: str) -> subprocess.CompletedProcess[str]:
    """Run the template's ExecCondition= for ``instance`` as systemd would."""
    line = _one(_unit(RUN_TEMPLATE)["Service"], "ExecCondition")
    argv = [word.replace("$$", "$").replace("%i", instance) for word in shlex.split(line)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("task", TASKS)
def test_exec_condition_lets_maintenance_tasks_run(task: str) -> None:
    result = _exec_condition(task)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("instance", ["run", "status", "delete-all-cached", "prune --dry-run", ""])
def test_exec_condition_refuses_anything_else(instance: str) -> None:
    """255 fails the unit (1-254 would only skip it silently) with a message in the journal."""
    result = _exec_condition(instance)
    assert result.returncode == 255
    assert "unknown task; use clean, prune or reconcile" in result.stderr


def test_timer_template_runs_the_oneshot_on_a_calendar() -> None:
    timer = _unit(TIMER_TEMPLATE)
    assert timer["Timer"]["OnCalendar"]
    assert _one(timer["Timer"], "Persistent") == "true"
    assert _seconds(_one(timer["Timer"], "RandomizedDelaySec")) > 0
    assert "Unit" not in timer["Timer"]  # activates the service instance of the same name
    assert timer["Install"]["WantedBy"] == ["timers.target"]
