"""A ``glance-cache-agent run`` subprocess and the polling helpers its tests share.

Used by ``test_daemon.py`` and ``test_monitoring_e2e.py``. Nothing here waits
a fixed time for something to happen: every wait polls an observable condition
(a log line, a datagram, a scrape) against a bounded deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from glance_cache_agent.driver import Driver

#: the daemon's scheduled tasks
TASKS = ("clean", "prune", "reconcile")
#: the longest any single condition may take to become true
DEADLINE = 20.0
#: a JSON log line on stdout: syslog priority prefix, then the object
LOG_LINE = re.compile(r"^<(\d)>(\{.*\})\s*$")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def wait_until(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class NotifySocket:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify.sock"
        if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes
            self._short_dir: str | None = tempfile.mkdtemp(prefix="gca-")
            path = Path(self._short_dir) / "notify.sock"
        else:
            self._short_dir = None
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._cond:
                self.messages.append(fields)
                self._cond.notify_all()

    def wait_for(
        self, what: str, match: Callable[[dict[str, str]], bool], start: int = 0
    ) -> tuple[int, dict[str, str]]:
        """The first message from index ``start`` on that ``match``es, with its index."""

        def find() -> tuple[int, dict[str, str]] | None:
            for index in range(start, len(self.messages)):
                if match(self.messages[index]):
                    return index, self.messages[index]
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout=DEADLINE)
        if found is None:
            pytest.fail(f"no sd_notify message {what} after {DEADLINE:g} s: {self.messages}")
        return found

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)


class Daemon:
    """One ``glance-cache-agent run`` subprocess, its log lines and its endpoint."""

    def __init__(self, config_path: Path, notify: NotifySocket) -> None:
        self.config_path = config_path
        self.notify = notify
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "glance_cache_agent.cli",
                "-c",
                str(config_path),
                "--log-format",
                "json",
                "run",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="daemon-stdout", daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = LOG_LINE.match(line)
            with self._cond:
                self.lines.append(line)
                if match:
                    record = json.loads(match[2])
                    record["_priority"] = int(match[1])
                    self.logs.append(record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def log_index(self) -> int:
        with self._cond:
            return len(self.logs)

    def find_logs(self, event: str, start: int = 0, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                r
                for r in self.logs[start:]
                if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())
            ]

    def wait_log(self, event: str, start: int = 0, **fields: Any) -> dict[str, Any]:
        """The first log record from index ``start`` with this event and fields."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: self.find_logs(event, start, **fields) or self.proc.poll() is not None,
                timeout=DEADLINE,
            )
        records = self.find_logs(event, start, **fields)
        if not records:
            state = "exited" if found else "still running"
            pytest.fail(f"no log {event!r} {fields} ({state}); output:\n{self.output}")
        return records[0]

    def wait_ready(self) -> dict[str, str]:
        """Wait for the first READY=1; learn the endpoint from 'agent started'."""
        _, message = self.notify.wait_for("READY=1", lambda m: m.get("READY") == "1")
        started = self.wait_log("agent started")
        host, port = started["listen"]
        self.url = f"http://{host}:{port}"
        return message

    # -- HTTP --

    def get(self, path: str) -> tuple[int, str, str]:
        """``(status, content type, body)``; 4xx/5xx are answers, not errors."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def scrape_text(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return body

    def scrape(self) -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(self.scrape_text()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def health(self) -> tuple[int, dict[str, Any]]:
        status, content_type, body = self.get("/healthz")
        assert content_type == "application/json"
        return status, json.loads(body)

    def scrape_after(self, moment: float) -> Samples:
        """A scrape whose cache state was computed after ``moment`` (Unix time)."""

        def fresh() -> Samples | None:
            samples = self.scrape()
            stamp = samples.get(("glance_cache_state_timestamp_seconds", ()), 0.0)
            return samples if stamp > moment else None

        result: Samples = wait_until(f"a cache state computed after {moment}", fresh)
        return result

    # -- life --

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout:g} s; output:\n{self.output}")
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Agent:
    """Writes configs and starts daemons on one cache; kills them at teardown."""

    def __init__(self, tmp_path: Path, cache: Driver, notify: NotifySocket) -> None:
        self.tmp_path = tmp_path
        self.cache = cache
        self.notify = notify
        self.config_path = tmp_path / "config.yaml"
        self.port = free_port()
        self.daemons: list[Daemon] = []

    def config(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "cache": {"dir": self.cache.base_dir, "max_size": "10GiB"},
            "tasks": {t: {"interval": "1h", "jitter": 0} for t in TASKS},
            "metrics": {"listen": f"127.0.0.1:{self.port}", "state_max_age": "1s"},
            "agent": {"runtime_dir": str(self.tmp_path / "run"), "first_run_delay": 0},
        }
        return deep_merge(base, overrides)

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)

    def start(self, **overrides: Any) -> Daemon:
        """Write the config and start a daemon; wait for READY=1."""
        for _attempt in range(3):
            self.write(self.config(**overrides))
            start = len(self.notify.messages)
            daemon = Daemon(self.config_path, self.notify)
            self.daemons.append(daemon)
            if self._ready_or_port_taken(daemon, start):
                return daemon
            self.port = free_port()  # lost the race for the port: try another
        pytest.fail("could not start the daemon on a free port")

    def _ready_or_port_taken(self, daemon: Daemon, start: int) -> bool:
        def settled() -> bool:
            ready = any(m.get("READY") == "1" for m in self.notify.messages[start:])
            return ready or daemon.proc.poll() is not None

        wait_until("READY=1 or an exit", settled)
        if daemon.proc.poll() is not None:
            daemon.wait_exit()
            if "address already in use" in daemon.output:
                return False
            pytest.fail(f"the daemon exited {daemon.proc.returncode}:\n{daemon.output}")
        daemon.wait_ready()
        return True

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
