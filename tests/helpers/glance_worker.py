"""A worker process for ``tests/test_reliability_glance.py``: a live "glance-api".

Run as ``python -m tests.helpers.glance_worker CONFIG_JSON`` (cwd: the repository
root). It drives Glance's REAL sqlite cache driver
(``glance.image_cache.drivers.sqlite.Driver``, glance==33.0.0) on the shared
cache directory and records what went wrong for Glance, so that the test can
prove the agent running beside it does no harm.

Protocol, all on stdio: after ``configure()`` the worker prints ``ready``;
it starts its loop when it reads ``go`` on stdin and runs for
``config["duration"]`` seconds and at least ``config["min_ops"]`` operations
(so a slow machine does less per second, never less in all); it writes its
figures as JSON to ``config["result"]`` and prints ``done``.

The loop mixes, with a seeded RNG:

* **write**: ``open_for_write`` with 64-512 KiB of real bytes (a fresh image
  id every time: ids are ``worker << 40 | n``, so workers never share an
  incomplete path). Before leaving the ``with`` block the worker checks that
  its open file still has a link and that the incomplete path is still that
  file; a commit whose rename fails with ``FileNotFoundError`` counts too.
* **held write**: like a write, but the incomplete file's mtime is pushed back
  past the agent's ``stall_time`` and the writer keeps it open until the agent
  has finished two clean runs (a counter file the test updates; polled, with
  ``hold_deadline`` only as a hang guard). Only the "open for writing" check
  can save such a file. Every ``hold_every_ops``-th operation is one, the
  first at ``hold_first_op``: their number does not depend on the clock.
* **read**: ``open_for_read`` of an image found in the base directory, read
  completely; the bytes read must equal the size ``fstat`` gave after the
  open and the size recorded in the image's header.
* **abandon**: a write that raises part-way (Glance's rollback to
  ``invalid/``) or whose generator is closed part-way (Glance's "incomplete
  fetch").
* **crashed write**: an incomplete file left behind by a "dead" writer (plain
  ``open``, closed, mtime pushed back): the agent's clean must remove these.

Every Glance database operation (one ``common.get_db`` block: connect, the
three PRAGMAs, the statements, commit, close) is timed. A lock failure is a
``TimeoutError`` (Glance's 2 s retry ran out) or any error or ERROR log record
mentioning "locked" (``get_db`` swallows ``sqlite3.DatabaseError`` and only
logs it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

KIB = 1024
CHUNK = 64 * KIB
HEADER = 16  # b"%016d" % size: lets a reader check it saw the whole image


class Abandon(Exception):
    """The upstream of a write died part-way."""


class _LogCapture(logging.Handler):
    """Collect Glance's ERROR records (``get_db`` swallows DB errors into them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(str(record.getMessage())[:300])
        except Exception:  # noqa: BLE001 -- a Glance message that does not format
            self.messages.append(repr(record.msg)[:300])


def _payload(size: int) -> list[bytes]:
    """Image bytes: a header with the size, then filler, in chunks."""
    body = (b"%016d" % size) + bytes(range(256)) * ((size - HEADER) // 256 + 1)
    body = body[:size]
    return [body[i : i + CHUNK] for i in range(0, size, CHUNK)]


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.index: int = config["index"]
        self.rng = random.Random(config["seed"])
        self.cache_dir: str = config["cache_dir"]
        self.counter_path: str = config["clean_counter"]
        self.serial = 0
        self.latencies: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.lock_failures: list[str] = []
        self.other_failures: list[str] = []
        self.vanished: list[str] = []
        self.short_reads: list[str] = []
        self.bad_content: list[str] = []
        self.held_unconfirmed = 0  # held writes whose two clean runs did not come in time
        self.configure_retries = 0
        self._op = "setup"

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        from tests.helpers.glance_harness import load_glance

        self.harness = load_glance()
        self._capture_glance_errors()

        self.harness.configure(
            self.cache_dir,
            max_size=self.config["glance_max_size"],
            stall_time=self.config["stall_time"],
            lock_path=self.config["lock_path"],
        )
        self.driver = self.harness.sqlite.Driver()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.driver.configure()
                break
            except self.harness.exception.BadDriverConfiguration:
                # Glance's initialize_db: executescript with zero lock tolerance
                self.configure_retries += 1
                if time.monotonic() > deadline:
                    raise
        self._instrument()

    def _capture_glance_errors(self) -> None:
        """Collect Glance's ERROR records (load_glance silences "glance" entirely)."""
        glance_logger = logging.getLogger("glance")
        glance_logger.setLevel(logging.ERROR)
        glance_logger.propagate = False
        self.log = _LogCapture()
        glance_logger.addHandler(self.log)

    def _instrument(self) -> None:
        """Time every ``common.get_db`` block the sqlite driver opens."""
        from glance.image_cache.drivers import common  # type: ignore[import-untyped]

        original = common.get_db
        worker = self

        @contextlib.contextmanager
        def timed_get_db(db_path: str) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                with original(db_path) as conn:
                    yield conn
            except BaseException as exc:
                # FileNotFoundError: commit's rename, counted by write() as vanished
                if not isinstance(exc, GeneratorExit | Abandon | FileNotFoundError):
                    worker._failure(exc, "get_db")
                raise
            finally:
                worker.latencies.setdefault(worker._op, []).append(time.perf_counter() - started)

        common.get_db = timed_get_db

    # --------------------------------------------------------------- recording

    def _failure(self, exc: BaseException, where: str) -> None:
        if getattr(exc, "_recorded", False):  # seen in get_db, now again at the op
            return
        with contextlib.suppress(AttributeError, TypeError):
            exc._recorded = True  # type: ignore[attr-defined]
        text = f"{self._op}/{where}: {type(exc).__name__}: {exc}"[:300]
        if isinstance(exc, TimeoutError) or "locked" in str(exc):
            self.lock_failures.append(text)
        else:
            self.other_failures.append(text)

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _new_id(self) -> str:
        self.serial += 1
        return str(uuid.UUID(int=(self.index + 1) << 40 | self.serial))

    def _clean_runs(self) -> int:
        try:
            with open(self.counter_path) as f:
                return int(f.read() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    # -------------------------------------------------------------- operations

    def _check_still_linked(self, image_id: str, cache_file: Any) -> bool:
        """True when the incomplete file we write is still in place."""
        path = self.driver.get_image_filepath(image_id, "incomplete")
        st = os.fstat(cache_file.fileno())
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            return False
        return st.st_nlink > 0 and (on_disk.st_dev, on_disk.st_ino) == (st.st_dev, st.st_ino)

    def write(self, held: bool = False, image_id: str | None = None) -> None:
        """Cache a new image (or ``image_id`` again); record what went wrong."""
        image_id = image_id or self._new_id()
        chunks = _payload(self.rng.randrange(64 * KIB, 512 * KIB + 1))
        self._op = "write"
        vanished = False
        try:
            with self.driver.open_for_write(image_id) as cache_file:
                cache_file.write(chunks[0])
                if held:
                    cache_file.flush()
                    self._hold(image_id)
                for chunk in chunks[1:]:
                    cache_file.write(chunk)
                cache_file.flush()
                if not self._check_still_linked(image_id, cache_file):
                    vanished = True
        except FileNotFoundError:  # commit's rename: the file is gone
            vanished = True
        except Exception as exc:  # noqa: BLE001 -- every Glance failure is a finding
            self._failure(exc, "open_for_write")
        if vanished:
            self.vanished.append(image_id)
        self._count("held_writes" if held else "writes")

    def _hold(self, image_id: str) -> None:
        """Make the incomplete file look stalled; keep it open over two cleans."""
        path = self.driver.get_image_filepath(image_id, "incomplete")
        old = time.time() - 10 * self.config["stall_time"]
        os.utime(path, (old, old))
        target = self._clean_runs() + 2  # the next run may have planned already
        deadline = time.monotonic() + self.config["hold_deadline"]
        while self._clean_runs() < target:
            if time.monotonic() > deadline:
                self.held_unconfirmed += 1
                return
            time.sleep(0.05)

    def read(self) -> None:
        try:
            names = [n for n in os.listdir(self.cache_dir) if len(n) == 36]
        except FileNotFoundError:
            names = []
        if not names:
            self._count("reads_nothing_cached")
            return
        image_id = self.rng.choice(names)
        self._op = "read"
        try:
            with self.driver.open_for_read(image_id) as cache_file:
                size = os.fstat(cache_file.fileno()).st_size
                data = cache_file.read()
        except FileNotFoundError:
            # Evicted between our listing and the open: Glance's own
            # check-then-open race, no file was opened.
            self._count("reads_missing")
            return
        except Exception as exc:  # noqa: BLE001 -- every Glance failure is a finding
            self._failure(exc, "open_for_read")
            return
        self._count("reads")
        if len(data) < size:
            self.short_reads.append(f"{image_id}: {len(data)} of {size}")
        elif len(data) < HEADER or int(data[:HEADER]) != len(data):
            self.bad_content.append(f"{image_id}: {len(data)} bytes, header {data[:HEADER]!r}")

    def abandon_raise(self) -> None:
        image_id = self._new_id()
        self._op = "abandon"
        try:
            with self.driver.open_for_write(image_id) as cache_file:
                cache_file.write(_payload(self.rng.randrange(64 * KIB, 256 * KIB))[0])
                raise Abandon("upstream died")
        except Abandon:
            pass
        except Exception as exc:  # noqa: BLE001 -- every Glance failure is a finding
            self._failure(exc, "abandon_raise")
        self._count("abandoned_raise")

    def abandon_close(self) -> None:
        image_id = self._new_id()
        self._op = "abandon"
        cm = self.driver.open_for_write(image_id)
        try:
            cache_file = cm.__enter__()
            cache_file.write(_payload(self.rng.randrange(64 * KIB, 256 * KIB))[0])
            cm.gen.close()  # GeneratorExit at the yield: "incomplete fetch"
        except Exception as exc:  # noqa: BLE001 -- every Glance failure is a finding
            self._failure(exc, "abandon_close")
        self._count("abandoned_close")

    def crashed_write(self) -> None:
        """A writer that died: its incomplete file stays, closed and old."""
        path = self.driver.get_image_filepath(self._new_id(), "incomplete")
        with open(path, "wb") as f:
            f.write(b"c" * 4096)
        old = time.time() - 10 * self.config["stall_time"]
        os.utime(path, (old, old))
        self._count("crashed_writes")

    # -------------------------------------------------------------------- loop

    def random_op(self, r: float) -> None:
        """One operation of the seeded mix, chosen by ``r`` in [0, 1)."""
        if r < 0.40:
            self.write()
        elif r < 0.82:
            self.read()
        elif r < 0.91:
            self.abandon_raise()
        elif r < 0.985:
            self.abandon_close()
        else:
            self.crashed_write()

    def run(self) -> None:
        duration = float(self.config["duration"])
        hold_every, first_hold = self.config["hold_every_ops"], self.config["hold_first_op"]
        started = time.monotonic()
        deadline = started + duration
        for ops in itertools.count():
            now = time.monotonic()
            if now >= deadline and ops >= self.config["min_ops"]:
                break
            if ops >= first_hold and (ops - first_hold) % hold_every == 0:
                self.write(held=True)
                continue
            if self.config["think"] > 0:
                # a glance-api's cache traffic comes in between image transfers
                time.sleep(self.rng.expovariate(1 / self.config["think"]))
            self.random_op(self.rng.random())
        self.counts["elapsed"] = round(time.monotonic() - started, 3)  # type: ignore[assignment]

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "counts": self.counts,
            "latencies": {k: [round(v, 6) for v in vs] for k, vs in self.latencies.items()},
            "lock_failures": self.lock_failures,
            "other_failures": self.other_failures,
            "log_errors": self.log.messages,
            "vanished": self.vanished,
            "short_reads": self.short_reads,
            "bad_content": self.bad_content,
            "held_unconfirmed": self.held_unconfirmed,
            "configure_retries": self.configure_retries,
        }


def main(argv: list[str], worker_class: type[Worker] = Worker) -> int:
    config = json.loads(argv[1])
    worker = worker_class(config)
    worker.setup()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    worker.run()
    tmp = config["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(worker.report(), f)
    os.replace(tmp, config["result"])
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
