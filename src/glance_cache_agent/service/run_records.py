"""The last task runs, kept in a small state file every process appends to.

Maintenance runs happen in the daemon, but also in other processes: by hand
(``glance-cache-agent prune``), from ``glance-cache-agent-run@.service`` and
its timer. Each real (non-dry) run appends one ``RunRecord`` to
``<runtime_dir>/task-runs.json``, beside ``maintenance.lock``; the daemon
folds the records of other processes into its ``task_*`` series at scrape
time (``RunLedger``), so the stale and failing alerts see every run, and
restores each task's last success and duration from the file when it starts.

The file is a JSON document with a random ``file_id``, a sequence number and
the last ``RECORDS_KEPT`` records. Writers serialise on an ``flock`` of the
directory itself (no extra lock file), replace the file atomically (a temp
file, fsync, rename) and never follow a symlink: every name is opened
relative to the directory with ``O_NOFOLLOW``, and a symlink planted under
the file's name is replaced, never written through. A file that is missing,
not a regular file, too large or not what a writer wrote counts as empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import TASK_NAMES
from ..driver.lockfile import wait_for_lock
from ..log import get_logger

LOG = get_logger("glance_cache_agent.run_records")

FILE_NAME = "task-runs.json"
#: records kept in the file: far more runs than happen between two scrapes
RECORDS_KEPT = 100
#: a larger file is not ours (RECORDS_KEPT records take about 20 KiB)
MAX_FILE_BYTES = 1 << 20
#: how long a writer waits for another writer (each holds the lock for < 1 ms)
LOCK_WAIT = 2.0
_LOCK_POLL = 0.01
_VERSION = 1


@dataclass(frozen=True)
class RunRecord:
    """One finished run: which task, when, whether it succeeded, by whom."""

    seq: int
    task: str
    finished_at: float
    ok: bool
    duration: float
    pid: int
    error: str | None = None


@dataclass(frozen=True)
class Journal:
    """The file's content; ``file_id`` is empty when there is no usable file."""

    file_id: str = ""
    seq: int = 0
    records: tuple[RunRecord, ...] = ()
    #: per task: when it last succeeded, and how long its last run took
    last_success: Mapping[str, float] = field(default_factory=dict)
    last_duration: Mapping[str, float] = field(default_factory=dict)

    def add(self, record: RunRecord) -> Journal:
        """This journal with ``record`` appended (the oldest records drop out)."""
        success = dict(self.last_success)
        if record.ok:
            success[record.task] = max(success.get(record.task, 0.0), record.finished_at)
        return Journal(
            file_id=self.file_id or secrets.token_hex(8),
            seq=record.seq,
            records=(*self.records, record)[-RECORDS_KEPT:],
            last_success=success,
            last_duration={**self.last_duration, record.task: record.duration},
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _VERSION,
                "file_id": self.file_id,
                "seq": self.seq,
                "records": [asdict(r) for r in self.records],
                "last_success": dict(self.last_success),
                "last_duration": dict(self.last_duration),
            },
            separators=(",", ":"),
        )


# ---------------------------------------------------------------- parsing


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _record(raw: object) -> RunRecord:
    if not isinstance(raw, dict) or raw.get("task") not in TASK_NAMES:
        raise ValueError(f"not a run record: {raw!r:.80}")
    error = raw.get("error")
    if not isinstance(raw.get("ok"), bool) or not (error is None or isinstance(error, str)):
        raise ValueError(f"not a run record: {raw!r:.80}")
    return RunRecord(
        seq=_count(raw.get("seq")),
        task=raw["task"],
        finished_at=_number(raw.get("finished_at")),
        ok=raw["ok"],
        duration=_number(raw.get("duration")),
        pid=_count(raw.get("pid")),
        error=error,
    )


def _per_task(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValueError("not a mapping of tasks")
    return {task: _number(value) for task, value in raw.items() if task in TASK_NAMES}


def parse_journal(text: str | bytes) -> Journal:
    """The journal in ``text``; raises ValueError unless a writer wrote it."""
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        raise ValueError("not a task-runs file of this version")
    file_id, records = doc.get("file_id"), doc.get("records")
    if not isinstance(file_id, str) or not file_id or not isinstance(records, list):
        raise ValueError("not a task-runs file of this version")
    return Journal(
        file_id=file_id,
        seq=_count(doc.get("seq")),
        records=tuple(_record(r) for r in records[-RECORDS_KEPT:]),
        last_success=_per_task(doc.get("last_success", {})),
        last_duration=_per_task(doc.get("last_duration", {})),
    )


# ------------------------------------------------------------ file access


@contextlib.contextmanager
def _directory(path: str) -> Iterator[int]:
    """An fd of the directory ``path``; never a symlink, never created here.

    Normalised first: a trailing slash would make the kernel follow a
    symlink in the last component despite ``O_NOFOLLOW``.
    """
    fd = os.open(
        os.path.normpath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    )
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writer_lock(dir_fd: int, timeout: float = LOCK_WAIT) -> Iterator[None]:
    """Exclusive among writers: an ``flock`` on the directory, bounded wait."""
    if wait_for_lock(dir_fd, record_lock=False, timeout=timeout, poll=_LOCK_POLL) is not None:
        raise TimeoutError(f"another process held the task-runs lock for {timeout:g} s")
    try:
        yield
    finally:
        fcntl.flock(dir_fd, fcntl.LOCK_UN)


def _read(dir_fd: int) -> Journal:
    """The journal in the directory; an empty one when there is no usable file."""
    try:
        fd = os.open(
            FILE_NAME,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except FileNotFoundError:
        return Journal()
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: not ours, never followed
            LOG.warning("ignoring a task-runs file that is a symlink", file=FILE_NAME)
            return Journal()
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            LOG.warning("ignoring a task-runs file that is not a regular file", file=FILE_NAME)
            return Journal()
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return parse_journal(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        LOG.warning("ignoring an unreadable task-runs file", file=FILE_NAME, error=str(exc))
        return Journal()


def _replace(dir_fd: int, journal: Journal) -> None:
    """Write ``journal`` to a new temp file and rename it over the file."""
    temp = f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644, dir_fd=dir_fd)
    try:
        try:
            _readable_by_the_daemon(fd, os.fstat(dir_fd))
            os.write(fd, journal.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, FILE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _readable_by_the_daemon(fd: int, directory: os.stat_result) -> None:
    """Mode 0644 whatever the umask, and, when root writes (``sudo
    glance-cache-agent prune``), owned like the directory: the daemon runs
    as the directory's owner and must read the file and write the next one."""
    os.fchmod(fd, 0o644)
    if os.geteuid() == 0 and (directory.st_uid, directory.st_gid) != (0, 0):
        os.fchown(fd, directory.st_uid, directory.st_gid)


def append_run(
    directory: str,
    task: str,
    ok: bool,
    duration: float,
    error: str | None = None,
    finished_at: float | None = None,
) -> tuple[str, RunRecord]:
    """Append one run of this process; return the file's id and the record.

    The directory must exist (systemd's ``RuntimeDirectory=``, or the
    maintenance lock, creates it): a run that failed on a wrong path
    creates nothing. Raises OSError (FileNotFoundError when it does not
    exist) or TimeoutError (lock held too long).
    """
    with _directory(directory) as dir_fd, _writer_lock(dir_fd):
        current = _read(dir_fd)
        record = RunRecord(
            seq=current.seq + 1,
            task=task,
            finished_at=time.time() if finished_at is None else finished_at,
            ok=ok,
            duration=duration,
            pid=os.getpid(),
            error=error,
        )
        journal = current.add(record)
        _replace(dir_fd, journal)
    return journal.file_id, record


def read_journal(directory: str) -> Journal:
    """The journal in ``directory`` (empty when the directory does not exist)."""
    try:
        with _directory(directory) as dir_fd:
            return _read(dir_fd)
    except FileNotFoundError:
        return Journal()


# ------------------------------------------------------------ the daemon


class RunLedger:
    """The daemon's bookkeeping of the file: which records it has counted.

    ``start()`` takes the file as it is as the baseline (those runs happened
    before this process, so its counters do not count them). ``record()``
    appends one of the daemon's own runs and remembers it, so ``fold()``,
    which returns the records added since, never returns it. A file replaced
    by a new one (another ``file_id``: deleted, or unreadable and rewritten)
    was created after the baseline, so all its records are new. Thread-safe.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._file_id = ""
        self._seen = 0
        self._own: set[tuple[str, int]] = set()

    def start(self) -> Journal:
        """Read the file as the baseline; return it (for the last successes)."""
        journal = read_journal(self.directory)
        with self._lock:
            self._file_id, self._seen = journal.file_id, journal.seq
        return journal

    def record(self, task: str, ok: bool, duration: float, error: str | None) -> RunRecord:
        """Append one of the daemon's own runs (which it counts itself)."""
        with self._lock:
            file_id, record = append_run(self.directory, task, ok, duration, error)
            self._own.add((file_id, record.seq))
        return record

    def fold(self) -> list[RunRecord]:
        """Records of other processes added since the last call, oldest first."""
        with self._lock:
            journal = read_journal(self.directory)
            if not journal.file_id:
                return []
            if journal.file_id != self._file_id:
                self._file_id, self._seen = journal.file_id, 0
            new = [r for r in journal.records if r.seq > self._seen]
            lost = (new[0].seq if new else journal.seq + 1) - self._seen - 1
            if lost > 0:
                LOG.warning("task runs dropped out of the file before they were counted", lost=lost)
            self._seen = max(self._seen, journal.seq)
            fresh = [r for r in new if (journal.file_id, r.seq) not in self._own]
            self._own = {
                own for own in self._own if own[0] == self._file_id and own[1] > self._seen
            }
            return fresh


__all__ = [
    "FILE_NAME",
    "RECORDS_KEPT",
    "Journal",
    "RunLedger",
    "RunRecord",
    "append_run",
    "parse_journal",
    "read_journal",
]
