"""The Ansible role and playbooks (ansible/): a real ``ansible-playbook`` run on localhost
installs the agent from this checkout into a temporary root (service management off),
then the results are checked; plus ansible-lint, check mode and argument validation."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from glance_cache_agent import __version__
from glance_cache_agent.config import load_config
from glance_cache_agent.driver import CacheSettings, Driver
from tests.helpers.tools import ci
from tests.helpers.unit_files import (
    MAX_EXPOSURE,
    REPO,
    RUN_TEMPLATE,
    SERVICE,
    UNIT_DIR,
    exposure,
    needs_systemd_analyze,
    parse_unit,
    verify,
)

pytestmark = pytest.mark.slow

ANSIBLE_DIR = REPO / "ansible"
ROLE = ANSIBLE_DIR / "roles" / "glance_cache_agent"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
RECAP = re.compile(r"^localhost\s*:\s*(.*)$", re.M)
#: Unit directives the role fills in from variables; everything else must match systemd/.
TEMPLATED = {"ExecStart", "ExecReload", "User", "Group", "ReadWritePaths", "TimeoutStopSec"}
#: a protected image: Glance's image ids are UUIDs
GOLDEN = "601de41e-0000-4000-8000-000000000001"

if shutil.which("ansible-playbook", path=str(BIN)) is None:  # pragma: no cover
    if ci():
        raise RuntimeError("CI must run the role tests: ansible-core (the test extra) is missing")
    pytest.skip("ansible-core is not installed (the test extra)", allow_module_level=True)


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        match = RECAP.search(self.output)
        assert match is not None, self.output[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_LOCAL_TEMP=str(Path(os.environ.get("TMPDIR", "/tmp"))),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _playbook(playbook: Path, inventory: Path, *args: str, timeout: int = 300) -> Run:
    result = subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(playbook), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )
    return Run(result.returncode, result.stdout + result.stderr)


@dataclass
class Root:
    """A temporary root the role installs into, with its playbook and inventory."""

    path: Path
    wheel: Path

    @property
    def venv(self) -> Path:
        return self.path / "opt/glance-cache-agent"

    @property
    def config_dir(self) -> Path:
        return self.path / "etc/glance-cache-agent"

    @property
    def unit_dir(self) -> Path:
        return self.path / "etc/systemd/system"

    @property
    def cache_dir(self) -> Path:
        return self.path / "var/lib/glance/image-cache"

    @property
    def lock_dir(self) -> Path:
        return self.path / "var/lib/glance/lock"

    @property
    def glance_conf(self) -> Path:
        return self.path / "etc/glance/glance-api.conf"

    def role_vars(self) -> dict[str, Any]:
        return {
            "glance_cache_agent_package_file": str(self.wheel),
            "glance_cache_agent_python": sys.executable,
            "glance_cache_agent_venv_dir": str(self.venv),
            "glance_cache_agent_config_dir": str(self.config_dir),
            "glance_cache_agent_unit_dir": str(self.unit_dir),
            "glance_cache_agent_bin_link": str(self.path / "usr/local/bin/glance-cache-agent"),
            "glance_cache_agent_install_system_packages": False,
            "glance_cache_agent_manage_service": False,
            "glance_cache_agent_user": USER,
            "glance_cache_agent_group": GROUP,
            "glance_cache_agent_file_owner": USER,
            "glance_cache_agent_legacy_cron_user": USER,
            "glance_cache_agent_cache_dir": str(self.cache_dir),
            "glance_cache_agent_glance_config": [str(self.glance_conf)],
            "glance_cache_agent_stall_time": "6h",
            "glance_cache_agent_tasks": {"prune": {"interval": "15m", "jitter": "30s"}},
            "glance_cache_agent_prune": {"low_watermark": "90%", "protected_images": [GOLDEN]},
            "glance_cache_agent_reconcile": {"orphans": "report"},
            "glance_cache_agent_metrics_listen": "127.0.0.1:19742",
            "glance_cache_agent_log_format": "json",
            "glance_cache_agent_timers": {"reconcile": "daily"},
            "glance_cache_agent_config_overrides": {"agent": {"lock_timeout": "2m"}},
        }

    def write(self) -> None:
        """Glance's side of the host: its config file, cache and lock directories."""
        host = (self.path / "usr/local/bin", self.unit_dir)  # exist on any real host
        for directory in (self.cache_dir, self.lock_dir, self.glance_conf.parent, *host):
            directory.mkdir(parents=True, exist_ok=True)
        self.glance_conf.write_text(
            "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_max_size = 21474836480\n"
            f"[oslo_concurrency]\nlock_path = {self.lock_dir}\n"
        )
        inventory = {
            "all": {
                "hosts": {
                    "localhost": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "ansible_become": False,
                    }
                },
                "children": {"glance_api": {"hosts": {"localhost": None}}},
            }
        }
        (self.path / "hosts.yml").write_text(yaml.safe_dump(inventory))
        self.write_playbook(self.role_vars())

    def write_playbook(self, role_vars: dict[str, Any]) -> None:
        play = [
            {
                "name": "Converge",
                "hosts": "localhost",
                "gather_facts": False,
                "roles": [{"role": "glance_cache_agent", "vars": role_vars}],
            }
        ]
        (self.path / "converge.yml").write_text(yaml.safe_dump(play, sort_keys=False))

    def converge(self, *args: str) -> Run:
        return _playbook(self.path / "converge.yml", self.path / "hosts.yml", *args)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a wheel, the way an operator ships a build to the controller."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("glance_cache_agent-*.whl")
    return found


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> tuple[Root, Run, Run]:
    """One real install into a temporary root, then the same playbook again."""
    root = Root(tmp_path_factory.mktemp("root"), wheel)
    root.write()
    first = root.converge()
    second = root.converge() if first.returncode == 0 else first
    return root, first, second


@pytest.fixture
def empty_root(tmp_path: Path, wheel: Path) -> Root:
    root = Root(tmp_path, wheel)
    root.write()
    return root


# ------------------------------------------------------------ the real run


def test_first_run_installs(converged: tuple[Root, Run, Run]) -> None:
    _root, first, _second = converged
    assert first.returncode == 0, first.output[-5000:]
    assert first.recap["failed"] == 0
    assert first.recap["changed"] > 0


def test_second_run_changes_nothing(converged: tuple[Root, Run, Run]) -> None:
    _root, _first, second = converged
    assert second.returncode == 0, second.output[-5000:]
    assert second.recap["changed"] == 0, second.output[-5000:]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_files_and_modes(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    assert _mode(root.config_dir) == 0o750
    assert _mode(root.config_dir / "config.yaml") == 0o640
    for unit in (SERVICE, RUN_TEMPLATE, "glance-cache-agent-run@.timer"):
        assert _mode(root.unit_dir / unit) == 0o644, unit
    timer_dropin = root.unit_dir / "glance-cache-agent-run@reconcile.timer.d/schedule.conf"
    assert "OnCalendar=\nOnCalendar=daily\n" in timer_dropin.read_text()
    link = root.path / "usr/local/bin/glance-cache-agent"
    assert link.is_symlink() and link.resolve() == (root.venv / "bin/glance-cache-agent").resolve()
    assert (root.venv / "dist" / root.wheel.name).read_bytes() == root.wheel.read_bytes()
    assert not (root.cache_dir / "cache.db").exists()  # the role never creates a cache


def test_rendered_config(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    path = root.config_dir / "config.yaml"
    assert path.read_text().startswith("#\n# Ansible managed")
    config = load_config(str(path))
    assert config.cache.dir == str(root.cache_dir)
    assert config.cache.max_size == 20 * 1024**3  # from glance-api.conf
    assert config.cache.lock_path == str(root.lock_dir)  # from glance-api.conf
    assert config.cache.stall_time == 6 * 3600
    assert config.tasks["prune"].interval == 15 * 60
    assert config.tasks["prune"].jitter == 30
    assert config.tasks["clean"].enabled
    assert not config.tasks["reconcile"].enabled  # run by its timer instead
    assert config.prune.low_watermark == pytest.approx(0.9)
    assert GOLDEN in config.prune.protected_images
    assert config.reconcile.orphans.value == "report"
    assert config.metrics.listen == "127.0.0.1:19742"
    assert config.logging.format == "json"
    assert config.agent.runtime_dir == "/run/glance-cache-agent"
    assert config.agent.lock_timeout == 120


def test_rendered_units(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    agent = root.venv / "bin/glance-cache-agent"
    config = root.config_dir / "config.yaml"
    service = parse_unit((root.unit_dir / SERVICE).read_text())["Service"]
    oneshot = parse_unit((root.unit_dir / RUN_TEMPLATE).read_text())["Service"]
    assert service["ExecStart"] == [f"{agent} --config {config} run"]
    assert oneshot["ExecStart"] == [f"{agent} --config {config} %i"]
    for unit in (service, oneshot):
        assert unit["User"] == [USER] and unit["Group"] == [GROUP]
        # the lock directory comes from glance-api.conf, found through check-config
        assert unit["ReadWritePaths"] == [f"{root.cache_dir} {root.lock_dir}"]
    assert service["TimeoutStopSec"] == ["180"]


@pytest.mark.parametrize("name", [SERVICE, RUN_TEMPLATE, "glance-cache-agent-run@.timer"])
def test_rendered_units_keep_the_shipped_directives(
    converged: tuple[Root, Run, Run], name: str
) -> None:
    """The role's templates and systemd/ must not drift apart (hardening above all)."""
    root, _first, _second = converged
    rendered = parse_unit((root.unit_dir / name).read_text())
    shipped = parse_unit((UNIT_DIR / name).read_text())
    assert rendered.keys() == shipped.keys()
    for section in shipped:
        keys = set(shipped[section]) | set(rendered[section])
        diff = {
            k: (shipped[section].get(k), rendered[section].get(k))
            for k in sorted(keys - TEMPLATED)
            if shipped[section].get(k) != rendered[section].get(k)
        }
        assert diff == {}, section


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [SERVICE, "glance-cache-agent-run@prune.service"])
def test_rendered_units_verify_and_stay_hardened(
    converged: tuple[Root, Run, Run], unit: str, tmp_path: Path
) -> None:
    root, _first, _second = converged
    result = verify(root.unit_dir, unit)
    assert result.returncode == 0, result.stdout + result.stderr
    # scored as deployed: the test installs with its own user (root on CI), which
    # systemd-analyze security rightly counts against the unit
    staged = tmp_path / "units"
    staged.mkdir()
    for rendered in root.unit_dir.glob("*.service"):
        text = re.sub(r"(?m)^(User|Group)=.*$", r"\1=glance", rendered.read_text())
        (staged / rendered.name).write_text(text)
    assert exposure(staged, unit) <= MAX_EXPOSURE


def test_installed_agent_answers(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    agent = str(root.venv / "bin/glance-cache-agent")
    version = subprocess.run([agent, "--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"glance-cache-agent {__version__}")
    config = str(root.config_dir / "config.yaml")
    check = subprocess.run([agent, "check-config", config], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{config}: OK")
    assert "glance-api.conf [DEFAULT] image_cache_max_size" in check.stdout


def test_check_diff_on_the_converged_root_changes_nothing(
    converged: tuple[Root, Run, Run],
) -> None:
    root, _first, _second = converged
    run = root.converge("--check", "--diff")
    assert run.returncode == 0, run.output[-5000:]
    assert run.recap["changed"] == 0, run.output[-5000:]


def test_check_diff_on_an_empty_root_shows_the_config_and_writes_nothing(
    empty_root: Root,
) -> None:
    run = empty_root.converge("--check", "--diff")
    assert run.returncode == 0, run.output[-5000:]
    assert run.recap["changed"] > 0
    assert f"+  dir: {empty_root.cache_dir}" in run.output  # the config's diff
    # notified, but handlers do nothing in check mode
    handlers = re.findall(r"RUNNING HANDLER \[glance_cache_agent : (.*?)\] \**\n(\w+)", run.output)
    assert ("Restart glance-cache-agent", "skipping") in handlers
    assert {outcome for _name, outcome in handlers} == {"skipping"}
    assert not empty_root.venv.exists()
    assert not empty_root.config_dir.exists()
    assert list(empty_root.unit_dir.iterdir()) == []


def test_a_config_check_config_refuses_never_goes_live(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    live = root.config_dir / "config.yaml"
    before = live.read_bytes()
    bad = {**root.role_vars(), "glance_cache_agent_max_size": "10G"}
    bad_root = Root(root.path, root.wheel)
    play = root.path / "bad.yml"
    bad_root.write_playbook(bad)
    (root.path / "converge.yml").rename(play)
    try:
        run = _playbook(play, root.path / "hosts.yml")
    finally:
        root.write_playbook(root.role_vars())
    assert run.returncode != 0
    assert "cache.max_size: ambiguous unit 'G' in '10G'" in run.output
    assert live.read_bytes() == before


BAD_VARIABLES = [
    (
        {"glance_cache_agent_log_level": "verbose"},
        "value of glance_cache_agent_log_level must be one of: "
        "debug, info, warning, error, critical, got: verbose",
    ),
    (
        {"glance_cache_agent_tasks": {"prunee": {"interval": "1h"}}},
        "glance_cache_agent_tasks.prunee. Supported parameters include: clean, prune, reconcile",
    ),
    (
        {"glance_cache_agent_reconcile": {"orphans": "keep"}},
        "value of orphans must be one of: adopt, delete, report, got: keep "
        "found in glance_cache_agent_reconcile",
    ),
    (
        {"glance_cache_agent_watchdog_sec": "a minute"},
        "argument 'glance_cache_agent_watchdog_sec' is of type str "
        "and we were unable to convert to int",
    ),
    (
        {"glance_cache_agent_manage_service": "perhaps"},
        "argument 'glance_cache_agent_manage_service' is of type str "
        "and we were unable to convert to bool",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_VARIABLES)
def test_bad_variables_are_rejected_by_argument_specs(
    empty_root: Root, override: dict[str, Any], message: str
) -> None:
    empty_root.write_playbook({**empty_root.role_vars(), **override})
    run = empty_root.converge()
    assert run.returncode != 0
    assert "Validating arguments against arg spec 'main'" in run.output
    assert message in run.output, run.output[-3000:]
    assert not empty_root.config_dir.exists()


def test_preflight_rejects_relative_glance_config(empty_root: Root) -> None:
    empty_root.write_playbook(
        {**empty_root.role_vars(), "glance_cache_agent_glance_config": ["glance-api.conf"]}
    )
    run = empty_root.converge()
    assert run.returncode != 0
    assert "glance_cache_agent_glance_config needs absolute paths" in run.output


# ------------------------------------------------------------ centralized_db

#: the database password: it may reach the rendered config, never ansible's output
SECRET = "n0t-for-the-logs"
DATABASE_URL = f"postgresql://glance:{SECRET}@db.example.test/glance"
NODE_URL = "http://glance-1.example.test:9292"


def test_by_default_the_agent_follows_the_nodes_glance_config() -> None:
    """Driver, database and node come from glance-api.conf unless the inventory says otherwise."""
    defaults = _defaults()
    assert defaults["glance_cache_agent_glance_config"] == ["/etc/glance/glance-api.conf"]
    assert defaults["glance_cache_agent_driver"] is None
    assert defaults["glance_cache_agent_database_url"] == ""
    assert defaults["glance_cache_agent_node_url"] is None


def test_a_centralized_glance_config_is_followed_by_reference(empty_root: Root) -> None:
    """Glance's config says centralized_db: the rendered config names Glance's file and the
    agent takes driver, database and node from it; the password is copied nowhere."""
    empty_root.glance_conf.write_text(
        f"[DEFAULT]\nimage_cache_driver = centralized_db\nworker_self_reference_url = {NODE_URL}\n"
        f"[database]\nconnection = {DATABASE_URL}\n"
        f"[oslo_concurrency]\nlock_path = {empty_root.lock_dir}\n"
    )
    run = empty_root.converge("-v", "--diff")
    assert run.returncode == 0, run.output[-5000:]
    assert SECRET not in run.output
    path = empty_root.config_dir / "config.yaml"
    assert SECRET not in path.read_text()
    config = load_config(str(path))
    assert list(config.cache.glance_config) == [str(empty_root.glance_conf)]
    assert (config.cache.driver, config.cache.node_url) == ("centralized_db", NODE_URL)
    assert config.cache.database == DATABASE_URL


#: the two ways an inventory can pass the URL
URL_OVERRIDES: dict[str, dict[str, Any]] = {
    "variable": {"glance_cache_agent_database_url": DATABASE_URL},
    "config_overrides": {
        "glance_cache_agent_config_overrides": {"cache": {"database": DATABASE_URL}}
    },
}


@pytest.mark.parametrize("given_as", sorted(URL_OVERRIDES))
def test_a_database_url_override_never_reaches_ansibles_output(
    empty_root: Root, given_as: str
) -> None:
    """An explicit URL must be written for the agent, but the tasks handling it are no_log:
    neither -v nor --diff shows it, and only root and the agent's group can read the file."""
    empty_root.write_playbook({
        **empty_root.role_vars(),
        "glance_cache_agent_driver": "centralized_db",
        "glance_cache_agent_node_url": NODE_URL,
        **URL_OVERRIDES[given_as],
    })  # fmt: skip
    run = empty_root.converge("-v", "--diff")
    assert run.returncode == 0, run.output[-5000:]
    assert SECRET not in run.output
    path = empty_root.config_dir / "config.yaml"
    assert load_config(str(path)).cache.database == DATABASE_URL
    assert _mode(path) == 0o640
    assert grp.getgrgid(path.stat().st_gid).gr_name == GROUP


# ------------------------------------------------------------ run.yml


def test_run_playbook_collects_each_hosts_json(
    converged: tuple[Root, Run, Run], tmp_path: Path
) -> None:
    root, _first, _second = converged
    driver = Driver(CacheSettings(cache_dir=str(root.cache_dir)))
    driver.configure()
    try:
        with driver.open_for_write("11111111-2222-4333-8444-555555555555") as cache_file:
            cache_file.write(b"x" * 4096)
        report = tmp_path / "report.json"
        run = _playbook(
            ANSIBLE_DIR / "playbooks/run.yml",
            root.path / "hosts.yml",
            "-e", "glance_cache_agent_run_task=prune",
            "-e", "glance_cache_agent_run_dry_run=true",
            "-e", json.dumps({
                "glance_cache_agent_run_report": str(report),
                "glance_cache_agent_venv_dir": str(root.venv),
                "glance_cache_agent_config_dir": str(root.config_dir),
                "glance_cache_agent_user": USER,
            }),
        )  # fmt: skip
    finally:
        shutil.rmtree(root.cache_dir)
        root.cache_dir.mkdir()
    assert run.returncode == 0, run.output[-5000:]
    results = json.loads(report.read_text())
    assert list(results) == ["localhost"]
    result = results["localhost"]
    assert result["dry_run"] is True
    assert result["size_before"] == 4096
    assert result["pruned_images"] == 0  # far below the 20 GiB from glance-api.conf
    # a dry run changes nothing (only the report file is new)
    assert re.search(r"TASK \[Run glance-cache-agent prune\] \**\nok: \[localhost\]", run.output)


def test_run_playbook_refuses_an_unknown_task(converged: tuple[Root, Run, Run]) -> None:
    root, _first, _second = converged
    run = _playbook(
        ANSIBLE_DIR / "playbooks/run.yml",
        root.path / "hosts.yml",
        "-e", "glance_cache_agent_run_task=delete-all-cached",
    )  # fmt: skip
    assert "set glance_cache_agent_run_task to clean, prune or reconcile" in run.output


# ------------------------------------------------------------ static checks


def test_ansible_lint_production_profile() -> None:
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr


def _defaults() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def _specs() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())["argument_specs"]


def test_defaults_and_argument_specs_are_in_sync() -> None:
    defaults = _defaults()
    options = _specs()["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert name.startswith("glance_cache_agent_")
        assert spec.get("default") == defaults[name], name
        assert spec.get("description"), name
        assert spec.get("type"), name


def test_role_installs_this_version_by_default() -> None:
    assert _defaults()["glance_cache_agent_version"] == __version__


def test_role_metadata() -> None:
    meta = yaml.safe_load((ROLE / "meta/main.yml").read_text())["galaxy_info"]
    assert meta["min_ansible_version"]
    # only what tests/deploy/test_booted_host.py runs the role on
    assert meta["platforms"] == [{"name": "Debian", "versions": ["bookworm", "trixie"]}]


def test_example_inventory_applies_per_host_overrides() -> None:
    def host(name: str) -> dict[str, Any]:
        result = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", "inventory/example", "--host", name],
            cwd=ANSIBLE_DIR, capture_output=True, text=True, env=_env(), timeout=60, check=True,
        )  # fmt: skip
        return json.loads(result.stdout)

    plain, busy = host("glance-api-01.example.net"), host("glance-api-03.example.net")
    assert plain["glance_cache_agent_cache_dir"] == "/var/lib/glance/cache"
    assert "glance_cache_agent_max_size" not in plain
    assert busy["glance_cache_agent_max_size"] == "200GiB"
    assert busy["glance_cache_agent_prune"]["low_watermark"] == "85%"
    assert host("glance-api-04.example.net")["glance_cache_agent_uid"] == 42415


@pytest.mark.parametrize("playbook", ["site.yml", "run.yml"])
def test_playbooks_pass_syntax_check(playbook: str) -> None:
    result = subprocess.run(
        [str(PLAYBOOK), "--syntax-check", "-i", "inventory/example", f"playbooks/{playbook}"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_preflight_refuses_a_python_older_than_3_11(empty_root: Root) -> None:
    """An interpreter too old for the agent stops the role before anything is installed."""
    old_python = empty_root.path / "python3.9"
    old_python.write_text("#!/bin/sh\necho 3.9\n")  # what `python3.9 -c ...` would print
    old_python.chmod(0o755)
    empty_root.write_playbook(
        {**empty_root.role_vars(), "glance_cache_agent_python": str(old_python)}
    )
    run = empty_root.converge()
    assert run.returncode != 0
    assert (
        f"glance-cache-agent needs Python 3.11 or later, and glance_cache_agent_python"
        f" ({old_python}) is Python 3.9: install the distribution's python3.11 or newer"
    ) in run.output, run.output[-3000:]
    assert not empty_root.venv.exists()
