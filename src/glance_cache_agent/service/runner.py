"""Run one maintenance task the way both the daemon and the CLI run it.

A run opens the driver from the config (never creating anything), takes the
agent's maintenance lock (unless it is a dry run, which changes nothing),
then hands over to ``maintenance``. The scheduler and the CLI both call
``run_task``, so a scheduled run and an ad-hoc run can never overlap.

Every real (non-dry) run, finished or failed, is recorded in
``<runtime_dir>/task-runs.json`` (``run_records``): that is how the daemon's
``task_*`` series count the runs of other processes (by hand, by a timer).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import TASK_NAMES, Config, ConfigError
from ..driver import CacheDirectoryError, CacheDriver, Driver
from ..log import get_logger
from ..maintenance import (
    CleanResult,
    PruneResult,
    ReconcileResult,
    run_clean,
    run_prune,
    run_reconcile,
)
from ..maintenance.idle import ClockStep
from ..redact import mask_text
from .locks import LockBusy, maintenance_lock
from .run_records import append_run

LOG = get_logger("glance_cache_agent.runner")

Result = CleanResult | PruneResult | ReconcileResult
#: How a real run is recorded: ``(task, ok, duration, error)``.
Recorder = Callable[[str, bool, float, str | None], object]


@dataclass(frozen=True)
class TaskOutcome:
    """One finished run: what ran, how it was triggered, how long, what it did."""

    task: str
    trigger: str
    duration: float
    result: Result


def run_problem(outcome: object) -> str | None:
    """Why a finished run counts as failed, or None when it succeeded.

    A run that raised failed; so did one that finished but could not remove
    some files (its result lists them): the CLI exits 1 for it, and the
    daemon reports it the same way, in ``/healthz`` and the failure counter.
    A database URL in the reason never shows its password.
    """
    if isinstance(outcome, BaseException):
        return mask_text(f"{type(outcome).__name__}: {outcome}")
    errors = outcome.result.errors if isinstance(outcome, TaskOutcome) else []
    if errors:
        return f"{len(errors)} file operation(s) failed, first: {errors[0]}"
    return None


def journal_recorder(runtime_dir: str) -> Recorder:
    """The default ``Recorder``: append to ``<runtime_dir>/task-runs.json``."""

    def record(task: str, ok: bool, duration: float, error: str | None) -> None:
        append_run(runtime_dir, task, ok, duration, error)

    return record


def _record(recorder: Recorder | None, task: str, duration: float, outcome: object) -> None:
    """Record one run; a run's outcome never depends on whether that worked."""
    if recorder is None:
        return
    problem = run_problem(outcome)
    try:
        recorder(task, problem is None, duration, problem)
    except FileNotFoundError:
        pass  # no runtime directory yet: a failed run creates nothing (see append_run)
    except OSError as exc:  # TimeoutError included
        LOG.warning("cannot record the run for the daemon's metrics", task=task, error=str(exc))


def open_driver(config: Config) -> CacheDriver:
    """A driver on the configured cache, with the store ``cache.driver`` names;
    the directory and its database must already exist, and the database must
    be readable with Glance's schema.

    Nothing is created here: a wrong path must fail loudly, not produce an
    empty cache next to the real one. Checking the database up front (one
    cheap schema query; for centralized_db also the connection and this
    node's ``node_reference`` row) makes a missing or corrupt database fail
    before any lock file is created in the cache directory or the runtime dir.
    SQLAlchemy is imported only for centralized_db, so the sqlite path starts fast.
    """
    directory = config.cache.dir
    if not os.path.lexists(directory):
        raise CacheDirectoryError(f"cache directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise CacheDirectoryError(f"cache directory {directory} is not a directory")
    if config.cache.driver == "centralized_db":
        return _open_centralized(config)
    driver = Driver(config.cache_settings())
    driver.store.check_schema()
    return driver


@contextlib.contextmanager
def opened_driver(config: Config) -> Iterator[CacheDriver]:
    """``open_driver``, closed on exit: a centralized_db driver's pooled
    connections go back to the server now, not whenever the collector runs.

    For the daemon, which opens a driver for every run and every cache-state
    refresh; a one-shot CLI command simply exits.
    """
    driver = open_driver(config)
    try:
        yield driver
    finally:
        close_driver(driver)


def close_driver(driver: CacheDriver) -> None:
    """Release what ``driver`` holds open (a centralized_db driver's connections)."""
    close = getattr(driver, "close", None)  # only drivers holding connections have one
    if callable(close):
        close()


def _open_centralized(config: Config) -> CacheDriver:
    """The centralized_db driver: this node's rows in Glance's database.

    The loader already refuses a centralized_db config without both URLs;
    a ``Config`` built in code gets the same exit 78.
    """
    from ..driver.centralized import open_centralized_driver

    database, node_url = config.cache.database, config.cache.node_url
    if database is None or node_url is None:
        raise ConfigError(
            "cache.driver is centralized_db: cache.database and cache.node_url must both be set"
        )
    return open_centralized_driver(config.cache_settings(), database, node_url)


def run_task(
    config: Config,
    task: str,
    *,
    trigger: str = "adhoc",
    dry_run: bool = False,
    max_size: int | None = None,
    stall_time: float | None = None,
    lock_wait: float | None = None,
    pause: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
    record: Recorder | None = None,
    clock_steps: Sequence[ClockStep] = (),
) -> TaskOutcome:
    """Run ``task`` (clean, prune or reconcile) once and return its outcome.

    ``max_size`` and ``stall_time`` override the config for this run (CLI
    flags). ``lock_wait`` bounds the wait for the maintenance lock (None:
    wait as long as it takes). Raises LockBusy, DriverError subclasses,
    LockTimeout (Glance's own lock) or OSError; the caller reports them.
    ``pause`` is how the run waits between batches and ``stop`` is asked
    between batches whether to end early: the daemon passes its shutdown
    event's ``wait`` and ``is_set`` so SIGTERM is honoured at a safe point.
    A real run is reported to ``record`` (default: ``journal_recorder``),
    failed or not, except one that never got the maintenance lock (LockBusy:
    the holder's run is the one that counts); a dry run is not recorded.
    ``clock_steps`` (the daemon's) are left out of prune's idle ageing.
    """
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")
    recorder = None if dry_run else record or journal_recorder(config.agent.runtime_dir)
    started = time.monotonic()
    try:
        with opened_driver(config) as driver:
            started = time.monotonic()
            if dry_run:
                result = _dispatch(
                    config, driver, task, True, max_size, stall_time, pause, stop, clock_steps
                )
            else:
                with maintenance_lock(config.agent.runtime_dir, lock_wait, stop):
                    result = _dispatch(
                        config, driver, task, False, max_size, stall_time, pause, stop, clock_steps
                    )
    except LockBusy:
        raise
    except Exception as exc:
        _record(recorder, task, time.monotonic() - started, exc)
        raise
    outcome = TaskOutcome(task, trigger, time.monotonic() - started, result)
    _record(recorder, task, outcome.duration, outcome)
    return outcome


def _dispatch(
    config: Config,
    driver: CacheDriver,
    task: str,
    dry_run: bool,
    max_size: int | None,
    stall_time: float | None,
    pause: Callable[[float], None],
    stop: Callable[[], bool] | None,
    clock_steps: Sequence[ClockStep] = (),
) -> Result:
    lock_timeout = config.agent.glance_lock_timeout
    if task == "clean":
        return run_clean(
            driver,
            config.clean_policy(stall_time),
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            pause=pause,
        )
    if task == "prune":
        return run_prune(
            driver,
            config.prune_policy(max_size),
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            pause=pause,
            stop=stop,
            clock_steps=clock_steps,
        )
    return run_reconcile(
        driver, config.reconcile_policy(), dry_run=dry_run, lock_timeout=lock_timeout
    )


#: Per task, the result fields worth a place in the one-line run summary.
_SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "clean": (
        "invalid_removed",
        "stalled_removed",
        "bytes_freed",
        "skipped_active",
        "uninspectable_processes",
    ),
    "prune": ("pruned_images", "pruned_bytes", "size_before", "size_after", "stopped_by"),
    "reconcile": (
        "orphans_adopted",
        "orphans_removed",
        "orphans_reported",
        "phantoms_removed",
        "invalid_rows_removed",
        "sizes_fixed",
    ),
}


def summary_fields(outcome: TaskOutcome) -> dict[str, Any]:
    """The key/value pairs of the one log line every run ends with."""
    data = outcome.result.to_dict()
    fields: dict[str, Any] = {
        "task": outcome.task,
        "trigger": outcome.trigger,
        "dry_run": data["dry_run"],
        "duration_seconds": round(outcome.duration, 3),
    }
    fields.update({key: data[key] for key in _SUMMARY_KEYS[outcome.task]})
    if data.get("errors"):
        fields["errors"] = len(data["errors"])
    return fields
