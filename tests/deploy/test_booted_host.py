"""The deployment path end to end on a booted Debian host (systemd as PID 1).

One boot per distribution (module-scoped): the role converges on a minimal system,
then the tests drive the units as an operator would, in order: each test leaves the
host as the next one expects (the scenario of a first deployment, then operations).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.booted_host import booted, require_host, rootfs
from tests.helpers.deployment import (
    AGENT,
    ANSIBLE_DIR,
    CONFIG,
    SERVICE,
    Deployment,
    Run,
    agent_wheel,
    wheelhouse,
)
from tests.helpers.unit_files import parse_unit

pytestmark = pytest.mark.slow

#: Debian suite -> its Python (the wheelhouse is built for it).
DISTROS = {"bookworm": "3.11", "trixie": "3.13"}
CACHE = "/var/lib/glance/image-cache"
#: openstack-ansible's os_glance cron jobs (named by the tool's path in its venv), and
#: an unrelated job of the same user that must stay.
OS_GLANCE_BIN = "/openstack/venvs/glance-28.1.0/bin"
OS_GLANCE_JOBS = {"glance-cache-pruner": "0 * * * *", "glance-cache-cleaner": "0 */5 * * *"}
CRONTAB = "".join(
    f"#Ansible: {OS_GLANCE_BIN}/{tool}\n{when} {OS_GLANCE_BIN}/{tool}\n"
    for tool, when in OS_GLANCE_JOBS.items()
) + "15 3 * * * /usr/bin/true\n"
#: kolla-ansible: the "glance" volume (/var/lib/glance in the container) on the host,
#: and Glance's uid/gid there.
KOLLA_VOLUME = "/var/lib/docker/volumes/glance/_data"
KOLLA_UID = "42415"
KOLLA_USER = "kolla-glance"
IMAGES = [f"0b00c0de-0000-4000-8000-00000000000{n}" for n in range(4)]
#: Role variables of the test: a short watchdog (the kill -STOP test), a tiny max_size
#: (the prune test), and no scheduled task before the tests run them themselves.
ROLE_VARS = {
    "glance_cache_agent_watchdog_sec": 3,
    "glance_cache_agent_max_size": "64KiB",
    "glance_cache_agent_timers": {"reconcile": "daily"},
    "glance_cache_agent_config_overrides": {"agent": {"first_run_delay": "1d"}},
}
#: The change an operator rolls out: prune every other day (no run during the tests).
CHANGED = {"glance_cache_agent_tasks": {"prune": {"interval": "2d", "jitter": "0s"}}}
CHANGED_INTERVAL = 2 * 86400
#: The node's glance-api.conf, which the role points the agent at by default.
GLANCE_API_CONF = f"[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = {CACHE}\n"


@pytest.fixture(scope="module", params=list(DISTROS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A booted host with Glance's state (the glance user and its cache), converged twice."""
    require_host()
    suite: str = request.param
    base = rootfs(suite)
    work = tmp_path_factory.mktemp(f"host-{suite}")
    role_vars = {
        **ROLE_VARS,
        "glance_cache_agent_package_file": str(agent_wheel(work / "dist")),
        "glance_cache_agent_wheelhouse": str(wheelhouse(work / "wheels", DISTROS[suite])),
    }
    with booted(base, work / "machine", f"gca-test-{suite}") as host:
        deployed = Deployment(host, work, role_vars)
        host.check("groupadd", "--system", "glance")
        host.check("useradd", "--system", "--gid", "glance", "--home-dir", "/var/lib/glance",
                   "--shell", "/usr/sbin/nologin", "glance")  # fmt: skip
        host.check("install", "-d", "-o", "glance", "-g", "glance", "-m", "0750",
                   "/var/lib/glance", CACHE)  # fmt: skip
        host.check("install", "-d", "-m", "0755", "/etc/glance")
        host.check("install", "-m", "0640", "-g", "glance", "/dev/stdin",
                   "/etc/glance/glance-api.conf", input=GLANCE_API_CONF)  # fmt: skip
        deployed.runs["first"] = deployed.converge()
        if deployed.runs["first"].returncode == 0:
            deployed.runs["second"] = deployed.converge()
        yield deployed


# ------------------------------------------------------------ converging


def test_role_converges_on_a_minimal_host(deployment: Deployment) -> None:
    first = deployment.runs["first"].ok()
    assert first.recap["failed"] == 0 and first.recap["changed"] > 0
    installed = deployment.host.check("dpkg-query", "-W", "-f", "${Package} ${Status}\\n")
    assert "python3-venv install ok installed" in installed
    assert "python3-packaging install ok installed" in installed
    # the units need nothing the role did not install: no procps (/bin/kill) on this host
    assert "procps " not in installed
    # the locked versions, from the wheelhouse
    frozen = deployment.host.check(f"{Path(AGENT).parent}/pip", "freeze", "--all")
    assert "PyYAML==" in frozen and "apscheduler==" in frozen.lower()


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    second = deployment.runs["second"].ok()
    assert second.recap["changed"] == 0, second.output[-5000:]


def test_service_is_ready_as_glance_with_its_hardening(deployment: Deployment) -> None:
    state = deployment.show(SERVICE, "ActiveState", "SubState", "Type", "User", "NRestarts")
    # Type=notify: "active" only once the agent sent READY=1
    assert state == {"ActiveState": "active", "SubState": "running", "Type": "notify",
                     "User": "glance", "NRestarts": "0"}  # fmt: skip
    glance_uid = deployment.host.check("id", "-u", "glance").strip()
    status = deployment.host.check("cat", f"/proc/{deployment.main_pid()}/status")
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    assert fields["Uid"].split()[0] == glance_uid
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # SystemCallFilter=
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    # ProtectSystem=strict: only the cache is writable in the service's mount namespace
    mounts = deployment.host.check("cat", f"/proc/{deployment.main_pid()}/mountinfo")
    assert re.search(r" /usr ro[ ,]", mounts) or re.search(r" / ro[ ,]", mounts), mounts
    assert re.search(rf" {CACHE} rw[ ,]", mounts), mounts


def test_healthz_answers(deployment: Deployment) -> None:
    status, body = deployment.http_get("/healthz")
    assert status == 200, body
    assert '"status": "ok"' in body


def test_the_timer_is_listed(deployment: Deployment) -> None:
    timers = deployment.host.check("systemctl", "list-timers", "--all", "--no-pager")
    assert "glance-cache-agent-run@reconcile.timer" in timers
    timer = deployment.show("glance-cache-agent-run@reconcile.timer", "ActiveState")
    assert timer == {"ActiveState": "active"}


def _crontab(deployment: Deployment) -> str:
    return deployment.host.check("crontab", "-l", "-u", "glance")


def test_check_diff_reports_a_change_and_changes_nothing(deployment: Deployment) -> None:
    # Glance's state on an openstack-ansible host: cron, with os_glance's jobs
    deployment.host.check("apt-get", "install", "-q", "-y", "--no-install-recommends", "cron")
    deployment.host.check("crontab", "-u", "glance", "-", input=CRONTAB)
    config = deployment.host.check("cat", CONFIG)
    pid = deployment.main_pid()
    run = deployment.converge("--check", "--diff", **CHANGED).ok()
    assert run.recap["changed"] > 0
    assert re.search(r"^\+\s+interval: 2d$", run.output, re.M), run.output[-5000:]
    assert deployment.host.check("cat", CONFIG) == config
    assert _crontab(deployment) == CRONTAB
    assert deployment.main_pid() == pid


def _prune_interval(deployment: Deployment) -> float:
    return deployment.metric("glance_cache_task_interval_seconds", 'task="prune"')


def test_a_changed_variable_is_applied_by_a_reload(deployment: Deployment) -> None:
    pid = deployment.main_pid()
    assert _prune_interval(deployment) != CHANGED_INTERVAL
    run = deployment.converge(**CHANGED).ok()
    assert "RUNNING HANDLER [glance_cache_agent : Reload glance-cache-agent]" in run.output
    assert deployment.main_pid() == pid  # reloaded, not restarted
    assert _prune_interval(deployment) == CHANGED_INTERVAL
    deployment.role_vars.update(CHANGED)


def test_legacy_cron_jobs_are_removed(deployment: Deployment) -> None:
    # removed by the run above; the user's other job stays
    assert _crontab(deployment).strip().splitlines() == ["15 3 * * * /usr/bin/true"]


def test_reload_fails_visibly_on_a_bad_config(deployment: Deployment) -> None:
    good = deployment.host.check("cat", CONFIG)
    pid = deployment.main_pid()
    bad = re.sub(r"(?m)^(\s+max_size:).*$", r"\1 10G", good)
    assert bad != good
    deployment.host.check("sh", "-c", 'cat > "$1"', "sh", CONFIG, input=bad)
    try:
        reload = deployment.host.run("systemctl", "reload", SERVICE)
    finally:
        deployment.host.check("sh", "-c", 'cat > "$1"', "sh", CONFIG, input=good)
    assert reload.returncode != 0
    assert "Job for glance-cache-agent.service failed" in reload.stderr
    journal = deployment.host.check("journalctl", "-u", SERVICE, "--no-pager", "-o", "cat")
    assert "cache.max_size: ambiguous unit 'G' in '10G'" in journal
    # the daemon keeps running, on the old config
    assert deployment.show(SERVICE, "ActiveState") == {"ActiveState": "active"}
    assert deployment.main_pid() == pid
    assert _prune_interval(deployment) == CHANGED_INTERVAL


def _exists(deployment: Deployment, path: str) -> bool:
    return deployment.host.run("test", "-e", path).returncode == 0


def test_an_ad_hoc_prune_prunes_and_exits_0(deployment: Deployment) -> None:
    # four 32 KiB images (written in this order) in a 64 KiB cache: the two oldest go
    deployment.make_cache(CACHE, "glance", dict.fromkeys(IMAGES, 32 * 1024))
    run = deployment.host.run("systemctl", "start", "glance-cache-agent-run@prune")
    assert run.returncode == 0, run.stderr
    state = deployment.show("glance-cache-agent-run@prune.service", "Result", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainStatus": "0"}
    assert [_exists(deployment, f"{CACHE}/{image}") for image in IMAGES] == [
        False, False, True, True,
    ]  # fmt: skip


def test_an_unknown_instance_is_refused(deployment: Deployment) -> None:
    run = deployment.host.run("systemctl", "start", "glance-cache-agent-run@delete-all-cached")
    assert run.returncode != 0
    journal = deployment.host.check(
        "journalctl", "-u", "glance-cache-agent-run@delete-all-cached", "--no-pager", "-o", "cat"
    )
    assert "unknown task; use clean, prune or reconcile" in journal
    assert _exists(deployment, f"{CACHE}/{IMAGES[-1]}")


def _restarted(deployment: Deployment, deadline: float) -> dict[str, str]:
    """The service's state once systemd restarted it and it is running again."""
    while True:
        state = deployment.show(SERVICE, "ActiveState", "SubState", "NRestarts", "MainPID")
        if (state["NRestarts"], state["ActiveState"], state["SubState"]) == (
            "1", "active", "running",
        ):  # fmt: skip
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def test_a_stopped_agent_is_restarted_by_the_watchdog(deployment: Deployment) -> None:
    pid = deployment.main_pid()
    deployment.host.check("sh", "-c", 'kill -STOP "$1"', "sh", str(pid))  # no procps here
    state = _restarted(deployment, time.monotonic() + 120)
    assert int(state["MainPID"]) != pid
    journal = deployment.host.check("journalctl", "-u", SERVICE, "--no-pager", "-o", "cat")
    assert "Watchdog timeout" in journal
    status, _body = deployment.http_get("/healthz")
    assert status == 200


def test_stop_exits_cleanly(deployment: Deployment) -> None:
    stop = deployment.host.run("systemctl", "stop", SERVICE)
    assert stop.returncode == 0, stop.stderr
    state = deployment.show(SERVICE, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    # ExecMainCode 1 = CLD_EXITED: the agent exited by itself on SIGTERM, status 0
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0",
                     "ExecMainCode": "1"}  # fmt: skip


# ------------------------------------------------------------ kolla-ansible


#: ansible/inventory/kolla's variables, as an operator would deploy them.
KOLLA_VARS = yaml.safe_load(
    (ANSIBLE_DIR / "inventory/kolla/group_vars/glance_api.yml").read_text()
)


@pytest.fixture(scope="module")
def kolla(deployment: Deployment) -> Run:
    """The same host re-deployed as a kolla node (variables of ansible/inventory/kolla)."""
    for directory in ("", "/image-cache", "/tmp"):
        deployment.host.check("install", "-d", "-o", KOLLA_UID, "-g", KOLLA_UID, "-m", "0750",
                              f"{KOLLA_VOLUME}{directory}")  # fmt: skip
    deployment.make_cache(f"{KOLLA_VOLUME}/image-cache", KOLLA_UID, {})
    return deployment.converge(**KOLLA_VARS)


def test_kolla_units_follow_the_host_paths(deployment: Deployment, kolla: Run) -> None:
    kolla.ok()
    for unit in (SERVICE, "glance-cache-agent-run@.service"):
        text = deployment.host.check("cat", f"/etc/systemd/system/{unit}")
        service = parse_unit(text)["Service"]
        assert service["ReadWritePaths"] == [f"{KOLLA_VOLUME}/image-cache {KOLLA_VOLUME}/tmp"]
        assert service["User"] == [KOLLA_USER]
    state = deployment.show(SERVICE, "ActiveState", "User")
    assert state == {"ActiveState": "active", "User": KOLLA_USER}
    assert deployment.host.check("id", "-u", KOLLA_USER).strip() == KOLLA_UID


WRITER = """
import os, sys, time
path = sys.argv[1]
with open(path, "wb") as image:
    image.write(b"x" * 4096)
    image.flush()
    old = time.time() - 3 * 86400
    os.utime(path, (old, old))
    print("writing", flush=True)
    sys.stdin.read()
"""


def test_clean_spares_a_download_in_glances_mount_namespace(
    deployment: Deployment, kolla: Run
) -> None:
    """glance-api's writer sees the volume at /var/lib/glance in its own mount namespace."""
    kolla.ok()
    live, stalled = (f"{KOLLA_VOLUME}/image-cache/incomplete/{image}" for image in IMAGES[:2])
    deployment.as_user(KOLLA_UID, "python3", "-c", WRITER, stalled, input="")
    in_container = f"/var/lib/glance/image-cache/incomplete/{IMAGES[0]}"
    writer = subprocess.Popen(
        deployment.host.enter(
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind {KOLLA_VOLUME} /var/lib/glance && exec "$@"', "sh",
            "setpriv", f"--reuid={KOLLA_UID}", f"--regid={KOLLA_UID}", "--clear-groups",
            "python3", "-c", WRITER, in_container,
        ),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=deployment.host.env(),
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        run = deployment.host.run("systemctl", "start", "glance-cache-agent-run@clean")
        assert run.returncode == 0, run.stderr
        assert _exists(deployment, live)
        assert not _exists(deployment, stalled)  # the same age, not open: removed
    finally:
        writer.communicate(input="", timeout=60)
    assert writer.returncode == 0
