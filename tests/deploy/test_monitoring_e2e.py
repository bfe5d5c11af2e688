"""The dashboard and the alert rules against a real Prometheus scraping a real agent.

The agent runs (``glance-cache-agent run``, a subprocess) on a small demo
cache with tasks every few seconds; a real Prometheus server (Debian's
``prometheus`` package, as ``.ci/run`` installs it) scrapes it every second
with ``monitoring/prometheus/prometheus.yml``'s scrape job and evaluates
``alerts.yml`` every second. The test drives the cache (new images, reads,
an eviction, stalled and invalid files, queue entries, and a reconcile run by
another process, as ``glance-cache-agent-run@reconcile`` and its timer run it:
the daemon does not schedule reconcile), then asks Prometheus's HTTP API for
every expression of the dashboard, with Grafana's variables substituted, and
for every rule, and compares the answers with the cache on disk. Every alert's
expression, its thresholds turned into ``bool`` comparisons and its offsets
dropped, must give series of this node with the alert's labels. Then images
are evicted, cached again and evicted again until ``GlanceCacheEvictionChurn``
goes pending; finally it breaks ``cache.db`` and watches another go pending.

``promtool check rules`` runs in ``test_monitoring.py``; ``promtool check
metrics`` on a live scrape in ``test_daemon.py::test_live_scrape_passes_promtool``.
Every wait polls with a deadline; every process started is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from glance_cache_agent.cli.demo import build_demo
from glance_cache_agent.driver import STATES, CacheSettings, Driver, EntryKind
from glance_cache_agent.driver.oslo_lock import external_lock
from tests.helpers.agent_process import TASKS, Agent, Daemon, NotifySocket, free_port, wait_until
from tests.helpers.cache import cache_image, read_image, set_row, write_file
from tests.helpers.monitoring_files import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    load_dashboard,
    load_rules,
    query_panels,
)
from tests.helpers.tools import unavailable

GIB = 1024**3
SCRAPE_INTERVAL = "1s"
#: what Grafana would put in for its built-in variables (scrape interval 1 s)
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
JOB = "glance-cache-agent"
#: alerts whose condition depends on the test machine's free disk space
DISK_ALERTS = {
    "GlanceCacheFilesystemSpaceLow",
    "GlanceCacheFilesystemAlmostFull",
    # whatever else writes to this machine's disk moves its 6-hour trend
    "GlanceCacheFilesystemWillFill",
}
#: alerts that extrapolate a trend: labelled by node only, like the cache-state series
PREDICTIVE_ALERTS = {
    "GlanceCacheWillExceedLimit",
    "GlanceCacheFilesystemWillFill",
    "GlanceCacheEvictionChurn",
    "GlanceCacheHitRateCollapsed",
}
#: the task the daemon does not schedule: run by another process, as a systemd timer would
TIMER_TASK = "reconcile"
SCHEDULED_TASKS = tuple(task for task in TASKS if task != TIMER_TASK)
REEVICTED = "glance_cache_reevicted_images_total"

Series = list[dict[str, Any]]


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------


class PrometheusError(Exception):
    pass


class Prometheus:
    """A Prometheus server subprocess on a loopback port, with a temporary TSDB."""

    def __init__(self, binary: str, directory: Path, config: dict[str, Any]) -> None:
        self.binary = binary
        self.directory = directory
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        """Start on a free port (another on a lost race); wait until it is ready."""
        for attempt in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={self.config_path}",
                        f"--storage.tsdb.path={self.directory / f'data{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_until("Prometheus ready or exited", self._ready_or_exited, timeout=30)
            if self.proc.poll() is None:
                return
            if "address already in use" not in self.log:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log}")
        pytest.fail(f"could not start prometheus on a free port:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready_or_exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a successful API answer; PrometheusError with the error otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                body = json.loads(exc.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> Series:
        """An instant query's vector; scalars come back as one label-less sample."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", (expr, data)
        result: Series = data["result"]
        return result

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def prometheus_config(target: str) -> dict[str, Any]:
    """The shipped example, scraping ``target`` and evaluating every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        scrape_interval=SCRAPE_INTERVAL,
        scrape_timeout=SCRAPE_INTERVAL,
        evaluation_interval=SCRAPE_INTERVAL,
    )
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    job["scrape_interval"] = SCRAPE_INTERVAL
    job["static_configs"] = [{"targets": [target]}]
    return config


# --------------------------------------------------------------------------
# the cache's truth and the expectations per panel
# --------------------------------------------------------------------------


@dataclass
class Truth:
    """The cache as it is on disk now, read through the driver."""

    instance: str
    max_size: int
    size: int
    files: dict[str, int]
    rows: dict[str, Any]
    incomplete: int
    invalid: int
    queued: int
    queue_oldest: float | None
    free: int
    #: bytes of files named by no UUID (the demo's README): untracked, never touched
    foreign: int = 0

    @classmethod
    def read(cls, driver: Driver, instance: str, max_size: int) -> Truth:
        queue = driver.scan_state("queue")
        st = os.statvfs(driver.base_dir)
        return cls(
            instance=instance,
            max_size=max_size,
            size=driver.get_cache_size(),
            files={info.name: info.size for info in driver.iter_image_files()},
            rows={row.image_id: row for row in driver.store.list_rows()},
            incomplete=len(driver.scan_state("incomplete")),
            invalid=len(driver.scan_state("invalid")),
            queued=len(driver.get_queued_images()),
            queue_oldest=min((info.mtime for info in queue), default=None),
            free=st.f_bavail * st.f_frsize,
            foreign=sum(i.size for i in driver.scan_base().others.get(EntryKind.FOREIGN, []))
            + sum(i.size for state in STATES for i in driver.scan_state_dir(state)[1]),
        )

    @property
    def orphans(self) -> set[str]:
        return set(self.files) - set(self.rows)

    @property
    def phantoms(self) -> set[str]:
        return set(self.rows) - set(self.files)

    @property
    def untracked(self) -> int:
        return sum(self.files[name] for name in self.orphans) + self.foreign

    def top_images(self, limit: int) -> list[str]:
        tracked = set(self.files) & set(self.rows)
        return sorted(tracked, key=lambda i: (-self.rows[i].hits, i))[:limit]


Check = Callable[[Series, Truth], str | None]


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def one(expected: Callable[[Truth], float], tolerance: float = 0.0) -> Check:
    """One series for the node, equal to ``expected`` (within ``tolerance``, relative)."""

    def check(series: Series, truth: Truth) -> str | None:
        if len(series) != 1:
            return f"expected one series, got {series}"
        want, got = expected(truth), value(series[0])
        if abs(got - want) > tolerance * abs(want):
            return f"value {got!r}, the cache says {want!r}"
        return None

    return check


def by_label(label: str, expected: Callable[[Truth], dict[str, Callable[[float], bool]]]) -> Check:
    """One series per value of ``label``, each value satisfying its predicate."""

    def check(series: Series, truth: Truth) -> str | None:
        want = expected(truth)
        got = {s["metric"].get(label): value(s) for s in series}
        if len(got) != len(series) or set(got) != set(want):
            return f"{label} values {sorted(map(str, got))}, expected {sorted(want)}"
        wrong = {key: v for key, v in got.items() if not want[key](v)}
        return f"unexpected values {wrong}" if wrong else None

    return check


def equals(target: float) -> Callable[[float], bool]:
    return lambda v: v == target


def positive(v: float) -> bool:
    return v > 0


def non_negative(v: float) -> bool:
    return v >= 0


def per_task(predicate: Callable[[float], bool], tasks: tuple[str, ...] = TASKS) -> Check:
    return by_label("task", lambda _t: {task: predicate for task in tasks})


def at_most_one(predicate: Callable[[float], bool]) -> Check:
    """A prediction: none when the trend says nothing will happen, else one satisfying it."""

    def check(series: Series, _truth: Truth) -> str | None:
        if len(series) > 1 or not all(predicate(value(s)) for s in series):
            return f"expected at most one series satisfying the predicate, got {series}"
        return None

    return check


def nothing(series: Series, _truth: Truth) -> str | None:
    """No data: Prometheus is minutes old, so nothing a day back."""
    return f"expected no series, got {series}" if series else None


def finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def top_images(kind: str) -> Check:
    """The table's rows: the exported most-hit images, their hits or their sizes."""

    def check(series: Series, truth: Truth) -> str | None:
        ids = truth.top_images(20)
        want = {i: truth.rows[i].hits if kind == "hits" else truth.files[i] for i in ids}
        got = {s["metric"].get("image_id"): value(s) for s in series}
        return None if got == want else f"got {got}, the cache's top images are {want}"

    return check


def free_space(series: Series, truth: Truth) -> str | None:
    """Free bytes move with whatever else writes to the disk: within 1 % or 256 MiB."""
    if len(series) != 1:
        return f"expected one series, got {series}"
    got = value(series[0])
    slack = max(256 * 1024**2, truth.free // 100)
    return None if abs(got - truth.free) <= slack else f"{got} free, statvfs says {truth.free}"


def queue_age(series: Series, truth: Truth) -> str | None:
    if truth.queue_oldest is None or len(series) != 1:
        return f"expected one series for a non-empty queue, got {series}"
    want = time.time() - truth.queue_oldest
    got = value(series[0])
    return None if abs(got - want) < 10 else f"age {got}, the oldest entry is {want:.1f} s old"


#: (panel title, refId) -> what Prometheus must answer for it once the driven
#: changes are processed. Every target of the dashboard needs an entry.
EXPECTED: dict[tuple[str, str], Check] = {
    ("Cache fill", "A"): one(lambda t: t.size / t.max_size, 1e-9),
    ("Cache size", "A"): one(lambda t: t.size),
    ("Cache size", "B"): one(lambda t: t.max_size),
    ("Cached images", "A"): one(lambda t: len(t.files)),
    ("Cached images", "B"): one(lambda t: t.queued),
    ("Hit rate", "A"): by_label("instance", lambda t: {t.instance: positive}),
    ("Agent", "A"): one(lambda _t: 1),
    ("Agent", "B"): one(lambda _t: 1),
    ("Size vs limit", "A"): one(lambda t: t.size),
    ("Size vs limit", "B"): one(lambda t: t.max_size),
    ("Images by state", "A"): by_label(
        "state",
        lambda t: {
            "cached": equals(len(t.files)),
            "incomplete": equals(t.incomplete),
            "invalid": equals(t.invalid),
        },
    ),
    ("Queue depth", "A"): one(lambda t: t.queued),
    ("Oldest queued image age", "A"): queue_age,
    ("Cache hit rate", "A"): by_label("instance", lambda t: {t.instance: positive}),
    ("Cache hit rate", "B"): nothing,
    ("Top images by hits", "A"): top_images("hits"),
    ("Top images by hits", "B"): top_images("size"),
    # the demo cache's rows are in cache.db: no node_url label
    ("Driver and node", "A"): by_label("driver", lambda _t: {"sqlite": equals(1)}),
    ("Time since last success", "A"): per_task(lambda v: 0 <= v < 30),
    ("Task failures", "A"): per_task(equals(0)),
    ("Task runs and failures", "A"): per_task(positive),
    ("Task runs and failures", "B"): per_task(equals(0)),
    ("Task runs and failures", "C"): per_task(non_negative),
    ("Task duration", "A"): per_task(positive),
    # 2 s, jitter 0; the timer-driven task has no schedule in the daemon
    ("Task schedule", "A"): per_task(equals(2), SCHEDULED_TASKS),
    ("Pruned", "A"): by_label("instance", lambda t: {t.instance: positive}),
    ("Pruned", "B"): by_label("instance", lambda t: {t.instance: positive}),
    ("Removed files by reason", "A"): by_label(
        "reason",
        lambda _t: {
            "invalid": positive,
            "stalled": positive,
            "pruned": positive,
            "orphan": equals(0),  # reconcile.orphans: adopt
        },
    ),
    ("Orphans and phantom rows", "A"): one(lambda t: len(t.orphans)),
    ("Orphans and phantom rows", "B"): one(lambda t: len(t.phantoms)),
    ("Untracked bytes", "A"): one(lambda t: t.untracked),
    ("Filesystem free space", "A"): free_space,
    ("Filesystem free space", "B"): one(lambda t: max(t.max_size - t.size, 0)),
    ("Time until max_size", "A"): at_most_one(non_negative),
    ("Time until the filesystem is full", "A"): at_most_one(non_negative),
    ("Predicted size vs limit", "A"): one(lambda t: t.size),
    ("Predicted size vs limit", "B"): by_label("instance", lambda t: {t.instance: finite}),
    ("Predicted size vs limit", "C"): one(lambda t: t.max_size),
    ("Predicted free space", "A"): free_space,
    ("Predicted free space", "B"): by_label("instance", lambda t: {t.instance: finite}),
    ("Eviction churn", "A"): by_label("instance", lambda t: {t.instance: non_negative}),
    ("Eviction churn", "B"): by_label("instance", lambda t: {t.instance: equals(0)}),
}
#: targets whose answer may rightly be empty (a trend that predicts nothing, a
#: day-old offset): their checks say when
MAY_BE_EMPTY = {
    ("Cache hit rate", "B"),
    ("Time until max_size", "A"),
    ("Time until the filesystem is full", "A"),
}


def grafana_regex_escape(text: str) -> str:
    """What Grafana puts in a PromQL regex for one selected value of a multi-value variable."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", text)


def substitute(expr: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in variables:
            pytest.fail(f"unknown variable ${name} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def legend_labels(target: dict[str, Any]) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))


def label_probe(expr: str) -> str:
    """An alert's expression that yields its series whatever their values:
    comparisons return 0/1 (``bool``) instead of filtering, ``unless`` becomes
    ``and`` (only the label matching is left), offsets go (no history yet)."""
    probe = re.sub(r"(>=|<=|==|!=|>|<)(?!\s*bool)", r"\1 bool", expr)
    probe = re.sub(r"\bunless\b", "and", probe)
    return re.sub(r"\s+offset\s+\w+", "", probe)


def test_label_probe() -> None:
    expr = 'a{x="1"} > 0.5 * b[1h] offset 1d\nunless\nc >= 1 / 60 and d[5m] offset 2h < bool e'
    assert label_probe(expr) == (
        'a{x="1"} > bool 0.5 * b[1h]\nand\nc >= bool 1 / 60 and d[5m] < bool e'
    )


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        unavailable("prometheus is not installed (Debian package prometheus)")
    return path


@pytest.fixture
def demo(tmp_path: Path) -> tuple[Driver, int]:
    """A 30-image demo cache a little over its max_size, and that max_size."""
    demo_config = yaml.safe_load(build_demo(tmp_path / "demo", images=30).read_text())
    max_size = demo_config["cache"]["max_size"]
    assert max_size.endswith("GiB")
    driver = Driver(CacheSettings(cache_dir=demo_config["cache"]["dir"]))
    return driver, int(max_size[:-3]) * GIB


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def agent(tmp_path: Path, demo: tuple[Driver, int], notify: NotifySocket) -> Iterator[Agent]:
    helper = Agent(tmp_path, demo[0], notify)
    try:
        yield helper
    finally:
        helper.close()


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


# --------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------


def wait_task_log(
    daemon: Daemon, task: str, start: int, what: str, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for record in daemon.find_logs("task finished", start, task=task):
            if match(record):
                return record
        return None

    result: dict[str, Any] = wait_until(f"a {task} run that {what}", found)
    return result


def poll_query(
    prometheus: Prometheus, what: str, expr: str, check: Callable[[Series], object]
) -> Series:
    """Query until ``check`` finds nothing wrong; fail with its last complaint."""
    problem: list[object] = [None]

    def attempt() -> Series | None:
        series = prometheus.query(expr)
        problem[0] = check(series) or None  # falsy: nothing wrong
        return series if problem[0] is None else None

    deadline = time.monotonic() + 20
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: {expr}\n  {problem[0]}")
        time.sleep(0.2)


def test_dashboard_and_rules_against_a_real_prometheus(
    agent: Agent, demo: tuple[Driver, int], prometheus_binary: str, prometheus_dir: Path
) -> None:
    driver, max_size = demo
    assert driver.get_cache_size() > max_size  # the demo starts over its limit

    # -- the agent: every task every few seconds, orphans adopted after 10 minutes
    daemon = agent.start(
        cache={"max_size": max_size},
        tasks={
            "clean": {"interval": "2s", "jitter": 0},
            "prune": {"interval": "2s", "jitter": 0},
            TIMER_TASK: {"enabled": False},  # run by "the timer" below
        },
        prune={"low_watermark": "95%"},
        reconcile={"orphan_grace": "10m", "orphans": "adopt"},
        metrics={"per_image_limit": 20},
    )
    for task in SCHEDULED_TASKS:
        daemon.wait_log("task finished", task=task)
    instance = daemon.url.removeprefix("http://")

    # -- Prometheus scraping it with the shipped job and rules
    prometheus = Prometheus(prometheus_binary, prometheus_dir, prometheus_config(instance))
    try:
        prometheus.start()
        run_checks(prometheus, daemon, driver, instance, max_size)
    except BaseException:
        print(f"--- prometheus log:\n{prometheus.log[-5000:]}")
        print(f"--- agent output:\n{daemon.output[-5000:]}")
        raise
    finally:
        prometheus.stop()


def rules_state(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    """Every loaded rule by name, as /api/v1/rules reports it."""
    groups = prometheus.api("rules")["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def active_alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = prometheus.api("alerts")["alerts"]
    return alerts


def run_checks(
    prometheus: Prometheus, daemon: Daemon, driver: Driver, instance: str, max_size: int
) -> None:
    def truth() -> Truth:
        return Truth.read(driver, instance, max_size)

    def against_cache(check: Check) -> Callable[[Series], str | None]:
        return lambda series: check(series, truth())

    # -- scraped under the job name the alerts expect; every rule loaded and evaluated
    poll_query(
        prometheus,
        "the agent scraped under the shipped job name",
        f'up{{job="{JOB}"}}',
        lambda s: (
            None
            if [(x["metric"].get("instance"), value(x)) for x in s] == [(instance, 1.0)]
            else f"got {s}"
        ),
    )
    rule_names = {rule.get("alert") or rule["record"] for rule in load_rules()}

    def rules_evaluated() -> bool:
        state = rules_state(prometheus)
        return set(state) == rule_names and all(r["health"] == "ok" for r in state.values())

    wait_until("every rule loaded and evaluated without error", rules_evaluated)
    (before,) = poll_query(
        prometheus,
        "hits_total scraped",
        "glance_cache_hits_total",
        lambda s: None if len(s) == 1 else f"got {s}",
    )
    hits_before = value(before)

    # -- drive the cache: new images read a few times, one big enough to need a
    # prune, a stalled download, a failed one, two queued images
    mark = daemon.log_index()
    new_ids = [str(uuid.uuid4()) for _ in range(5)]
    reads = 0
    for count, image_id in enumerate(new_ids, start=1):
        cache_image(driver, image_id, 4096)
        for _ in range(count):
            read_image(driver, image_id)
            reads += 1
    big = str(uuid.uuid4())
    with driver.open_for_write(big) as cache_file:  # sparse: no real disk use
        cache_file.truncate(max_size - driver.get_cache_size() + GIB)
    write_file(Path(driver.layout.state_dir("incomplete")) / str(uuid.uuid4()), 1000, age=2 * 86400)
    write_file(Path(driver.layout.state_dir("invalid")) / str(uuid.uuid4()), 500)
    for _ in range(2):
        assert driver.queue_image(str(uuid.uuid4()))

    # -- the daemon's scheduled runs deal with it
    wait_task_log(daemon, "prune", mark, "evicts", lambda r: r["pruned_images"] > 0)
    wait_task_log(daemon, "clean", mark, "removes a stalled file", lambda r: r["stalled_removed"])
    wait_task_log(daemon, "clean", mark, "removes an invalid file", lambda r: r["invalid_removed"])
    state = truth()
    assert state.size <= max_size
    assert {big, *new_ids} <= set(state.files)  # the least recently used went
    assert state.queued >= 2 and state.orphans  # the demo's orphan is within its grace
    run_as_the_timer_does(prometheus, daemon)

    # hits_total moved up with the reads, and Prometheus has what the agent serves.
    # (Not always by exactly the reads: hits taken by an image between the
    # agent's last look at the rows and its eviction are not seen; but rows
    # removed by reconcile or prune never lower it.)
    def hits_scraped(series: Series) -> str | None:
        served = daemon.scrape()[("glance_cache_hits_total", ())]
        got = [value(x) for x in series]
        if got != [served] or not hits_before < served <= hits_before + reads:
            return f"Prometheus {got}, agent {served}, before {hits_before}, {reads} reads"
        return None

    poll_query(prometheus, "hits_total after the reads", "glance_cache_hits_total", hits_scraped)

    # -- every dashboard expression, with Grafana's variables substituted
    variables = {**BUILTINS, "job": JOB, "instance": grafana_regex_escape(instance)}
    seen = set()
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            key = (panel["title"], target["refId"])
            assert key in EXPECTED, f"no expectation for dashboard target {key}"
            seen.add(key)
            labels = legend_labels(target)
            if panel["type"] == "table":
                labels |= {"instance", "image_id" if "image" in target["expr"] else "driver"}

            def full_check(
                series: Series,
                check: Check = EXPECTED[key],
                labels: set[str] = labels,
                may_be_empty: bool = key in MAY_BE_EMPTY,
            ) -> str | None:
                if not series and not may_be_empty:
                    return "no series"
                for sample in series:
                    if not labels <= set(sample["metric"]):
                        return f"a series without the labels {sorted(labels)}: {sample}"
                    if sample["metric"].get("instance", instance) != instance:
                        return f"a series of another instance: {sample}"
                return check(series, truth())

            poll_query(
                prometheus, f"dashboard {key}", substitute(target["expr"], variables), full_check
            )
    assert seen == set(EXPECTED), f"expectations without a target: {set(EXPECTED) - seen}"

    # -- the recording rules, and every alert expression in the healthy state
    poll_query(
        prometheus,
        "recorded ages",
        "glance_cache_task:last_success_age_seconds",
        against_cache(per_task(lambda v: 0 <= v < 30)),
    )
    poll_query(
        prometheus,
        "recorded thresholds: twice glance_cache_task_interval_seconds (2 s, 2 s), and twice"
        " the default 6 h for the task the daemon does not schedule",
        "glance_cache_task:stale_threshold_seconds",
        against_cache(
            by_label(
                "task",
                lambda _t: {
                    "clean": equals(4),
                    "prune": equals(4),
                    TIMER_TASK: equals(2 * 6 * 3600),
                },
            )
        ),
    )
    check_alert_labels(prometheus, instance)
    for rule in alert_rules():
        name = rule["alert"]
        if name in DISK_ALERTS:
            continue
        poll_query(prometheus, f"{name} is silent", rule["expr"], lambda s: s and f"fires: {s}")
    # the disk alerts depend on this machine's free space: they must agree with it
    state = truth()
    room = max(state.max_size - state.size, 0) + 0.1 * state.max_size
    disk_conditions = {
        "GlanceCacheFilesystemSpaceLow": (state.free, room),
        "GlanceCacheFilesystemAlmostFull": (state.free, 0.05 * state.max_size),
    }
    for rule in alert_rules():
        if rule["alert"] not in disk_conditions:
            continue
        free, bound = disk_conditions[rule["alert"]]
        if abs(free - bound) < 0.01 * bound:
            prometheus.query(rule["expr"])  # too close to call: only valid
            continue
        fires = free < bound

        def as_expected(series: Series, fires: bool = fires) -> str | None:
            return None if bool(series) == fires else f"got {series}"

        poll_query(
            prometheus,
            f"{rule['alert']} {'fires' if fires else 'is silent'} ({free} free, bound {bound:.0f})",
            rule["expr"],
            as_expected,
        )
    for name, rule in rules_state(prometheus).items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)

    def only_disk_alerts() -> bool:
        return {a["labels"]["alertname"] for a in active_alerts(prometheus)} <= DISK_ALERTS

    wait_until("no alert active but the disk ones", only_disk_alerts)

    # -- images evicted, cached again (someone asked for them) and evicted again
    churn_until_the_alert_is_pending(prometheus, daemon, driver, instance, max_size)

    # -- break cache.db: the cache state is unreadable, tasks fail, an alert goes pending
    with open(driver.db_path, "r+b") as db:
        db.write(b"\0" * 100)

    def unreadable_pending() -> list[dict[str, Any]]:
        return [
            a
            for a in active_alerts(prometheus)
            if a["labels"]["alertname"] == "GlanceCacheStateUnreadable"
            and a["labels"].get("instance") == instance
            and a["labels"].get("severity") == "warning"
            and a["state"] == "pending"  # for: 10m
        ]

    wait_until("GlanceCacheStateUnreadable pending", unreadable_pending)
    poll_query(
        prometheus,
        "prune failures counted",
        'increase(glance_cache_task_failures_total{task="prune"}[1h]) > 0',
        lambda s: None if len(s) == 1 else f"got {s}",
    )
    poll_query(
        prometheus,
        "the cache-state metrics are gone",
        substitute(
            next(
                t["expr"]
                for p in query_panels(load_dashboard())
                if p["title"] == "Cache size"
                for t in p["targets"]
            ),
            variables,
        ),
        lambda s: s and f"still {s}",
    )


def run_as_the_timer_does(prometheus: Prometheus, daemon: Daemon) -> None:
    """Run the unscheduled task twice as ``glance-cache-agent-run@`` does (same
    config, another process); the daemon's task series count each run at the
    next scrape. (The first run creates the series, at 1: ``increase()`` sees
    runs from the second on.)"""
    for runs in (1.0, 2.0):
        done = subprocess.run(
            [sys.executable, "-m", "glance_cache_agent.cli", "-c", str(daemon.config_path)]
            + [TIMER_TASK],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr

        def counted(series: Series, runs: float = runs) -> str | None:
            return None if [value(x) for x in series] == [runs] else f"got {series}"

        poll_query(
            prometheus,
            "the timer's run counted in the daemon's task series",
            f'glance_cache_task_runs_total{{task="{TIMER_TASK}"}}',
            counted,
        )
    poll_query(
        prometheus,
        "no schedule exported for the timer's task",
        f'glance_cache_task_interval_seconds{{task="{TIMER_TASK}"}}',
        lambda s: s and f"got {s}",
    )


def check_alert_labels(prometheus: Prometheus, instance: str) -> None:
    """Every alert's expression, made to yield its series whatever their values
    (``label_probe``), gives series of this node under the shipped job, and the
    predictive ones exactly the node's labels: their vector matching works on
    what the agent really exports."""
    for rule in alert_rules():
        name = rule["alert"]

        def labelled(series: Series, name: str = name) -> str | None:
            if not series:
                return "no series"
            for sample in series:
                labels = sample["metric"]
                if (labels.get("instance"), labels.get("job")) != (instance, JOB):
                    return f"a series of another target: {labels}"
                if name in PREDICTIVE_ALERTS and set(labels) != {"instance", "job"}:
                    return f"labels {sorted(labels)}, expected instance and job only"
            return None

        poll_query(prometheus, f"{name}'s series", label_probe(rule["expr"]), labelled)


def churn_until_the_alert_is_pending(
    prometheus: Prometheus, daemon: Daemon, driver: Driver, instance: str, max_size: int
) -> None:
    """Cache the same five images, each bigger than the room left, as the least
    recently used, and let the daemon's prune evict them; again, until
    GlanceCacheEvictionChurn (at least 5 re-evictions in 6 h, at least a
    quarter of the evictions) goes pending."""
    ids = [str(uuid.uuid4()) for _ in range(5)]
    churn = next(rule for rule in alert_rules() if rule["alert"] == "GlanceCacheEvictionChurn")

    def pending() -> list[dict[str, Any]]:
        return [
            a
            for a in active_alerts(prometheus)
            if a["labels"]["alertname"] == "GlanceCacheEvictionChurn"
            and a["labels"].get("instance") == instance
            and a["labels"].get("severity") == "warning"
            and a["state"] == "pending"  # for: 30m
        ]

    for _round in range(8):
        room = max(max_size - driver.get_cache_size(), 0)
        # as glance-api's own prune would: the daemon's prune waits, then sees them all
        with external_lock(driver.base_dir, "glance-cache-prune"):
            for image_id in ids:
                with driver.open_for_write(image_id) as cache_file:  # sparse
                    cache_file.truncate(room + 1024**2)
                set_row(driver, image_id, last_accessed=1.0)
        wait_until("prune evicts them", lambda: not any(driver.is_cached(i) for i in ids))
        served = daemon.scrape()[(REEVICTED, ())]

        def scraped(series: Series, served: float = served) -> str | None:
            return None if [value(x) for x in series] == [served] else f"got {series}"

        poll_query(prometheus, "re-evictions scraped", REEVICTED, scraped)
        if prometheus.query(churn["expr"]):  # 5 or more, a quarter of the evictions or more
            wait_until("GlanceCacheEvictionChurn pending", pending)
            return
    pytest.fail(f"GlanceCacheEvictionChurn not pending: {active_alerts(prometheus)}")
