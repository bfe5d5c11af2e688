"""``clean``, ``prune`` and ``reconcile``: one maintenance run, now, in this process.

The run takes the maintenance lock like the daemon's scheduled runs, so the
two never overlap; SIGTERM ends it at a safe point.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ...errors import ExitCode
from ...maintenance import CleanResult, PruneResult, ReconcileResult
from ..errors import UsageError
from ..output import emit, emit_partial
from ..render import render_result

if TYPE_CHECKING:
    from ...config import Config

T = TypeVar("T")

#: the result type of each task (what a run that failed part-way attaches)
_RESULT_TYPES: dict[str, type[CleanResult | PruneResult | ReconcileResult]] = {
    "clean": CleanResult,
    "prune": PruneResult,
    "reconcile": ReconcileResult,
}


def _run(
    args: argparse.Namespace,
    config: Config,
    task: str,
    *,
    stall_time: float | None = None,
    max_size: int | None = None,
) -> int:
    """Run ``task`` once under the lock; exit 1 when any file operation failed."""
    import signal
    import threading

    from ...log import get_logger
    from ...service.runner import run_task, summary_fields

    # SIGTERM (systemctl stop of a oneshot) ends the run at a safe point, as in the daemon
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())

    def pause(seconds: float) -> None:
        stop.wait(seconds)

    try:
        outcome = run_task(
            config,
            task,
            dry_run=args.dry_run,
            lock_wait=config.agent.lock_timeout,
            pause=pause,
            stop=stop.is_set,
            stall_time=stall_time,
            max_size=max_size,
        )
    except Exception as exc:
        emit_partial(args, exc, _RESULT_TYPES[task], lambda r: r.to_dict(), render_result)
        raise
    get_logger("glance_cache_agent.cli").info("task finished", **summary_fields(outcome))
    result = outcome.result
    emit(args, result.to_dict(), lambda: render_result(result))
    return ExitCode.FAILED if result.errors else ExitCode.OK


def _option(value: str | None, parse: Callable[[str], T], flag: str) -> T | None:
    """Parse an optional flag's value with ``config``'s unit parsers (exit 2 if bad)."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cmd_clean(args: argparse.Namespace, config: Config) -> int:
    """``clean [--dry-run] [--stall-time DUR]``."""
    from ...config import parse_duration

    stall_time = _option(args.stall_time, parse_duration, "--stall-time")
    return _run(args, config, "clean", stall_time=stall_time)


def cmd_prune(args: argparse.Namespace, config: Config) -> int:
    """``prune [--dry-run] [--max-size SIZE]``."""
    from ...config import parse_size

    max_size = _option(args.max_size, parse_size, "--max-size")
    return _run(args, config, "prune", max_size=max_size)


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    """``reconcile [--dry-run]``."""
    return _run(args, config, "reconcile")
