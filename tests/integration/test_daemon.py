"""``glance-cache-agent run`` as a real subprocess on a real cache.

Real signals, a real ``AF_UNIX``/``SOCK_DGRAM`` notify socket, real HTTP.
Nothing waits a fixed time for something to happen: every wait polls an
observable condition (a log line, a datagram, a scrape, the disk) against a
bounded deadline. Tasks use 1 h intervals (and ``agent.first_run_delay``) so
each runs exactly once, at a moment the test chooses.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from glance_cache_agent import __version__
from glance_cache_agent.driver import Driver
from tests.helpers.agent_process import (
    TASKS,
    Agent,
    Daemon,
    NotifySocket,
    Samples,
    wait_until,
)
from tests.helpers.cache import cache_image, read_image, set_row, write_file
from tests.helpers.tools import unavailable

# --------------------------------------------------------------------------
# helpers (the daemon process itself: agent_process.py)
# --------------------------------------------------------------------------


def task_series(samples: Samples, task: str) -> dict[str, float]:
    names = (
        "glance_cache_task_runs_total",
        "glance_cache_task_failures_total",
        "glance_cache_task_duration_seconds",
        "glance_cache_task_last_success_timestamp_seconds",
    )
    return {
        name: samples[(name, (("task", task),))]
        for name in names
        if (name, (("task", task),)) in samples
    }


def driver_view(driver: Driver, hits_since_start: int) -> Samples:
    """What the cache-state metrics must say, computed from the driver's primitives
    (``hits_total`` counts the hits since the daemon started, which the test knows)."""
    files = {info.name: info.size for info in driver.iter_image_files()}
    rows = {row.image_id: row for row in driver.store.list_rows()}
    orphans = files.keys() - rows.keys()
    view: Samples = {
        ("glance_cache_size_bytes", ()): driver.get_cache_size(),
        ("glance_cache_images", (("state", "cached"),)): len(files),
        ("glance_cache_images", (("state", "incomplete"),)): len(driver.scan_state("incomplete")),
        ("glance_cache_images", (("state", "invalid"),)): len(driver.scan_state("invalid")),
        ("glance_cache_queued_images", ()): len(driver.get_queued_images()),
        ("glance_cache_orphan_files", ()): len(orphans),
        ("glance_cache_phantom_rows", ()): len(rows.keys() - files.keys()),
        ("glance_cache_untracked_bytes", ()): sum(files[name] for name in orphans),
        ("glance_cache_hits_total", ()): hits_since_start,
    }
    for image_id in rows.keys() & files.keys():
        view[("glance_cache_image_hits_total", (("image_id", image_id),))] = rows[image_id].hits
        view[("glance_cache_image_size_bytes", (("image_id", image_id),))] = files[image_id]
    return view


#: the cache-state series ``driver_view`` predicts
VIEW_NAMES = frozenset(
    {
        "glance_cache_size_bytes",
        "glance_cache_images",
        "glance_cache_queued_images",
        "glance_cache_orphan_files",
        "glance_cache_phantom_rows",
        "glance_cache_untracked_bytes",
        "glance_cache_hits_total",
        "glance_cache_image_hits_total",
        "glance_cache_image_size_bytes",
    }
)


def cache_state_samples(samples: Samples) -> Samples:
    """The scrape's samples that ``driver_view`` predicts."""
    return {key: value for key, value in samples.items() if key[0] in VIEW_NAMES}


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


def wait_first_runs(daemon: Daemon, tasks: tuple[str, ...] = TASKS) -> dict[str, dict[str, Any]]:
    """Wait for each task's first 'task finished' line; return them by task."""
    return {task: daemon.wait_log("task finished", task=task) for task in tasks}


def populate(cache: Driver, count: int, now: float) -> list[str]:
    """``count`` tracked images, oldest access first, sizes 1000, 2000, ... and hits."""
    ids = []
    for index in range(count):
        image_id = str(uuid.UUID(int=index + 1))
        cache_image(cache, image_id, size=1000 * (index + 1))
        set_row(cache, image_id, last_accessed=now - 3600 + index * 60, hits=3 * index + 1)
        ids.append(image_id)
    return ids


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_startup_ready_after_endpoint_status_and_zeroed_task_series(
    agent: Agent, cache: Driver, notify: NotifySocket
) -> None:
    populate(cache, 3, time.time())
    before = time.time()
    daemon = agent.start(
        agent={"first_run_delay": "1h"},  # nothing runs during this test
        tasks={"reconcile": {"enabled": False}},
    )
    # the endpoint answered as soon as READY=1 was out (start() returns right after it)
    samples = daemon.scrape()
    index, ready = notify.wait_for("READY=1", lambda m: m.get("READY") == "1")
    assert index == 0, notify.messages  # READY=1 is the first message
    status = ready["STATUS"]
    times = dict(re.findall(r"(\w+) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z", status))
    assert status.startswith("next: ") and sorted(times) == ["clean", "prune"], status
    for when in times.values():
        epoch = calendar.timegm(time.strptime(when, "%Y-%m-%d %H:%M:%S"))
        assert before + 3600 - 2 <= epoch <= time.time() + 3600 + 1, status

    for task in ("clean", "prune"):
        assert task_series(samples, task) == {
            "glance_cache_task_runs_total": 0,
            "glance_cache_task_failures_total": 0,
            "glance_cache_task_duration_seconds": 0,
            "glance_cache_task_last_success_timestamp_seconds": 0,
        }
    assert task_series(samples, "reconcile") == {}  # not configured to run
    assert samples[("glance_cache_build_info", (("version", __version__),))] == 1
    assert samples[("glance_cache_scrape_success", ())] == 1
    assert samples[("glance_cache_images", (("state", "cached"),))] == 3
    for reason in ("invalid", "stalled", "orphan", "pruned"):
        assert samples[("glance_cache_removed_files_total", (("reason", reason),))] == 0

    assert daemon.health() == (
        200,
        {"status": "ok", "scheduler_alive": True, "failing_tasks": []},
    )
    status_code, content_type, body = daemon.get("/")
    assert status_code == 200 and content_type.startswith("text/html")
    assert 'href="/metrics"' in body and 'href="/healthz"' in body
    # WATCHDOG_USEC=2 s: a ping every second, after the liveness check
    notify.wait_for("WATCHDOG=1", lambda m: m.get("WATCHDOG") == "1", start=index + 1)
    assert daemon.proc.poll() is None


def test_sigterm_exits_zero_promptly_with_stopping(agent: Agent, notify: NotifySocket) -> None:
    daemon = agent.start(agent={"first_run_delay": "1h"})
    mark = len(notify.messages)
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.output
    assert time.monotonic() - t0 < 60, "SIGTERM must end the daemon well within 90 s"
    notify.wait_for("STOPPING=1", lambda m: m.get("STOPPING") == "1", start=mark)
    daemon.wait_log("agent stopped")
    assert "Traceback" not in daemon.output


def test_metrics_match_the_drivers_view(agent: Agent, cache: Driver) -> None:
    now = time.time()
    populate(cache, 8, now)  # 36000 bytes, 92 hits
    initial_hits = cache.store.total_hits()
    write_file(Path(cache.layout.state_dir("invalid")) / str(uuid.uuid4()), 100, age=3600)
    write_file(Path(cache.layout.state_dir("incomplete")) / str(uuid.uuid4()), 200, age=7200)
    write_file(Path(cache.base_dir) / str(uuid.uuid4()), 500)  # an orphan
    daemon = agent.start(
        cache={"max_size": 20000, "stall_time": "1h"},
        reconcile={"orphans": "delete", "orphan_grace": 0},  # ctime cannot be faked
    )
    finished = wait_first_runs(daemon)
    done = time.time()

    # the agent's own counters equal what the runs logged
    samples = daemon.scrape_after(done)
    prune = finished["prune"]
    assert prune["pruned_images"] > 0 and prune["stopped_by"] == "target_reached", prune
    assert samples[("glance_cache_pruned_images_total", ())] == prune["pruned_images"]
    assert samples[("glance_cache_pruned_bytes_total", ())] == prune["pruned_bytes"]
    removed = {
        "invalid": finished["clean"]["invalid_removed"],
        "stalled": finished["clean"]["stalled_removed"],
        "orphan": finished["reconcile"]["orphans_removed"],
        "pruned": prune["pruned_images"],
    }
    assert removed == {"invalid": 1, "stalled": 1, "orphan": 1, "pruned": prune["pruned_images"]}
    for reason, count in removed.items():
        assert samples[("glance_cache_removed_files_total", (("reason", reason),))] == count
    for task in TASKS:
        series = task_series(samples, task)
        assert series["glance_cache_task_runs_total"] == 1
        assert series["glance_cache_task_failures_total"] == 0
        assert series["glance_cache_task_duration_seconds"] > 0
        assert now < series["glance_cache_task_last_success_timestamp_seconds"] <= done

    # the cache state equals the driver's view; hits_total counts from the start
    # (no read since), and evicting images with hits did not lower it
    assert cache.store.total_hits() < initial_hits
    view = driver_view(cache, hits_since_start=0)
    assert cache_state_samples(samples) == view
    # (prune may run before or after reconcile deleted the 500-byte orphan)
    assert prune["size_after"] <= 20000
    assert view[("glance_cache_size_bytes", ())] == 36000 - prune["pruned_bytes"]

    # disorder after the runs (which will not run again): the state follows it
    survivors = sorted(row.image_id for row in cache.store.list_rows())
    for image_id in (str(uuid.uuid4()), str(uuid.uuid4())):
        assert cache.queue_image(image_id)
    os.unlink(cache.get_image_filepath(survivors[0]))  # a phantom row
    write_file(Path(cache.base_dir) / str(uuid.uuid4()), 700)  # an orphan
    write_file(Path(cache.layout.state_dir("incomplete")) / str(uuid.uuid4()), 300)
    write_file(Path(cache.layout.state_dir("invalid")) / str(uuid.uuid4()), 50)
    read_image(cache, survivors[-1])  # one more hit
    changed = time.time()
    samples = daemon.scrape_after(changed)
    view = driver_view(cache, hits_since_start=1)
    assert cache_state_samples(samples) == view
    expected = {
        ("glance_cache_queued_images", ()): 2,
        ("glance_cache_orphan_files", ()): 1,
        ("glance_cache_phantom_rows", ()): 1,
        ("glance_cache_untracked_bytes", ()): 700,
        ("glance_cache_images", (("state", "incomplete"),)): 1,
        ("glance_cache_images", (("state", "invalid"),)): 1,
        ("glance_cache_hits_total", ()): 1,
    }
    assert {key: view[key] for key in expected} == expected
    assert samples[("glance_cache_scrape_success", ())] == 1
    assert samples[("glance_cache_queue_oldest_timestamp_seconds", ())] <= changed


def test_sighup_reload_changes_the_schedule_and_invalid_config_keeps_the_old(
    agent: Agent, notify: NotifySocket
) -> None:
    daemon = agent.start(agent={"first_run_delay": "1h"}, tasks={"reconcile": {"enabled": False}})
    assert task_series(daemon.scrape(), "reconcile") == {}

    # a valid new config: clean disabled, prune every 2 h, reconcile enabled
    agent.write(
        agent.config(
            agent={"first_run_delay": "1h"},
            tasks={"clean": {"enabled": False}, "prune": {"interval": "2h"}},
        )
    )
    mark, logs = len(notify.messages), daemon.log_index()
    daemon.signal(signal.SIGHUP)
    reloading, message = notify.wait_for(
        "RELOADING=1", lambda m: m.get("RELOADING") == "1", start=mark
    )
    assert int(message["MONOTONIC_USEC"]) > 0
    _, ready = notify.wait_for("READY=1", lambda m: m.get("READY") == "1", start=reloading + 1)
    assert re.fullmatch(r"next: prune \S+ \S+Z, reconcile \S+ \S+Z", ready["STATUS"]), ready
    changes = daemon.wait_log("schedule reloaded", start=logs)
    assert (changes["added"], changes["removed"], changes["changed"]) == (
        ["reconcile"],
        ["clean"],
        ["prune"],
    )
    daemon.wait_log("configuration reloaded", start=logs)
    assert task_series(daemon.scrape(), "reconcile")["glance_cache_task_runs_total"] == 0

    # an invalid new config: refused with the reason, the running one kept
    agent.write(agent.config(tasks={"prune": {"interval": "0s"}}))
    mark, logs = len(notify.messages), daemon.log_index()
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_log("reload refused: the new configuration is invalid", start=logs)
    assert refused["level"] == "error" and refused["_priority"] == 3
    assert re.search(
        r"config\.yaml:\d+: tasks\.prune\.interval: must be at least 1s", refused["error"]
    )
    reloading, _ = notify.wait_for("RELOADING=1", lambda m: m.get("RELOADING") == "1", start=mark)
    _, ready = notify.wait_for("READY=1", lambda m: m.get("READY") == "1", start=reloading + 1)
    assert "refused" in ready["STATUS"]
    assert daemon.proc.poll() is None
    assert daemon.health()[0] == 200
    assert not daemon.find_logs("schedule reloaded", start=logs)

    # the config in force is still the second one: disabling reconcile removes only it
    agent.write(
        agent.config(
            agent={"first_run_delay": "1h"},
            tasks={
                "clean": {"enabled": False},
                "prune": {"interval": "2h"},
                "reconcile": {"enabled": False},
            },
        )
    )
    logs = daemon.log_index()
    daemon.signal(signal.SIGHUP)
    changes = daemon.wait_log("schedule reloaded", start=logs)
    assert (changes["added"], changes["removed"], changes["changed"]) == ([], ["reconcile"], [])
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sigterm_during_a_batched_prune_stops_at_a_safe_point(
    agent: Agent, cache: Driver, notify: NotifySocket
) -> None:
    ids = [str(uuid.UUID(int=i + 1)) for i in range(10)]
    for index, image_id in enumerate(ids):
        cache_image(cache, image_id, size=1000)
        set_row(cache, image_id, last_accessed=time.time() - 3600 + index)
    # 9 victims, one per batch, 1 s apart: at least 8 s if left alone
    daemon = agent.start(
        cache={"max_size": 1000},
        tasks={"clean": {"enabled": False}, "reconcile": {"enabled": False}},
        prune={"batch_size": 1, "batch_pause": "1s"},
    )
    wait_until("the first eviction", lambda: len(list(cache.iter_image_files())) < 10)
    mark = len(notify.messages)
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.output
    elapsed = time.monotonic() - t0
    assert elapsed < 60, f"took {elapsed:.1f} s: SIGTERM must end the daemon well within 90 s"
    notify.wait_for("STOPPING=1", lambda m: m.get("STOPPING") == "1", start=mark)

    result = daemon.wait_log("task finished", task="prune")
    assert result["stopped_by"] == "stopped", result
    assert 1 <= result["pruned_images"] < 9
    # file before row: every row has its file, every file its row
    files = {info.name for info in cache.iter_image_files()}
    rows = {row.image_id for row in cache.store.list_rows()}
    assert rows == files
    assert len(files) == 10 - result["pruned_images"]
    assert files == set(ids[result["pruned_images"] :])  # least recently accessed went first


def test_healthz_503_while_a_task_fails_and_200_once_fixed(agent: Agent, cache: Driver) -> None:
    populate(cache, 2, time.time())
    daemon = agent.start(
        tasks={
            "clean": {"enabled": False},
            "reconcile": {"enabled": False},
            "prune": {"interval": "1s"},
        }
    )
    daemon.wait_log("task finished", task="prune")
    assert daemon.health() == (
        200,
        {"status": "ok", "scheduler_alive": True, "failing_tasks": []},
    )

    db = Path(cache.db_path)
    original = db.read_bytes()

    def zero_header() -> None:  # SQLite then says "file is not a database"
        with db.open("r+b") as handle:
            handle.write(b"\0" * 100)

    zero_header()
    logs = daemon.log_index()

    status, body = wait_until("/healthz 503", lambda: (h := daemon.health())[0] == 503 and h)
    assert body["status"] == "unhealthy" and body["failing_tasks"] == ["prune"], body
    assert body["scheduler_alive"] is True
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith(
        "task prune failed its last run: "
    ), body
    failed = daemon.wait_log("task failed", start=logs, task="prune")
    assert failed["level"] == "error" and failed["error"] in body["reasons"][0]

    def broken_scrape() -> Samples | None:
        samples = daemon.scrape()
        return samples if samples[("glance_cache_scrape_success", ())] == 0 else None

    samples = wait_until("scrape_success 0", broken_scrape)
    assert ("glance_cache_size_bytes", ()) not in samples
    assert samples[("glance_cache_task_failures_total", (("task", "prune"),))] >= 1

    # fixed: the next run succeeds
    db.write_bytes(original)
    wait_until("/healthz 200 again", lambda: daemon.health()[0] == 200)
    wait_until("scrape_success 1", lambda: daemon.scrape()[("glance_cache_scrape_success", ())])

    # broken again, then the failing task disabled by a reload: healthy, though the
    # cache state still cannot be read
    zero_header()
    wait_until("/healthz 503 again", lambda: daemon.health()[0] == 503)
    agent.write(agent.config(tasks={t: {"enabled": False} for t in TASKS}))
    daemon.signal(signal.SIGHUP)
    wait_until("/healthz 200 with prune disabled", lambda: daemon.health()[0] == 200)
    assert daemon.health()[1]["failing_tasks"] == []
    wait_until("scrape_success 0 again", broken_scrape)
    assert daemon.health()[0] == 200


def test_live_scrape_passes_promtool(agent: Agent, cache: Driver) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
    populate(cache, 5, time.time())
    cache.queue_image(str(uuid.uuid4()))
    daemon = agent.start(cache={"max_size": 10000})
    wait_first_runs(daemon)
    samples = daemon.scrape_after(time.time())
    assert samples[("glance_cache_pruned_images_total", ())] > 0
    assert ("glance_cache_queue_oldest_timestamp_seconds", ()) in samples
    text = daemon.scrape_text()
    assert "glance_cache_image_hits_total{" in text
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_port_in_use_exits_1_with_a_message(agent: Agent, notify: NotifySocket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        agent.port = busy.getsockname()[1]
        agent.write(agent.config())
        daemon = Daemon(agent.config_path, notify)
        agent.daemons.append(daemon)
        assert daemon.wait_exit() == 1
    record = daemon.wait_log("cannot start")
    assert record["error"] == (
        f"cannot listen on 127.0.0.1:{agent.port}: address already in use"
        " (is another agent or exporter running?)"
    )
    assert "Traceback" not in daemon.output
    assert not any(m.get("READY") == "1" for m in notify.messages)
