"""``glance-cache-agent``: the command line (DESIGN section 4).

Every data-producing command prints, with ``--json``, exactly one JSON
document on stdout; logs and errors go to stderr. Exit codes: 0 done, 1 the
operation failed, 2 usage error, 75 another maintenance run holds the lock,
78 configuration error. Commands other than ``run`` import only what they
need, so a maintenance command starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_CONFIG = 78

PROG = "glance-cache-agent"


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand of DESIGN section 4."""
    parser = _Parser(prog=PROG, description="Keep a Glance sqlite image cache healthy and visible.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="config file (default: $GLANCE_CACHE_AGENT_CONFIG, else "
        "/etc/glance-cache-agent/config.yaml)",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error", "critical"), default=None
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    command("run", "run the daemon: scheduler, metrics endpoint, sd_notify", json_flag=False)
    p = command("clean", "remove invalid files and stalled incomplete files")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed")
    p.add_argument("--stall-time", metavar="DUR", help="override cache.stall_time (e.g. 6h)")
    p = command("prune", "evict least recently accessed images down to the target")
    p.add_argument("--dry-run", action="store_true", help="report what would be evicted")
    p.add_argument("--max-size", metavar="SIZE", help="override cache.max_size (e.g. 50GiB)")
    p = command("reconcile", "fix orphan files, phantom rows, size drift, stale queue entries")
    p.add_argument("--dry-run", action="store_true", help="report what would change")
    command("status", "one summary of the cache")
    command("list-cached", "cached images, ordered by image id")
    command("list-queued", "queued image ids, oldest first")
    for name, text in (
        ("queue", "queue images for caching"),
        ("delete-cached", "delete cached images"),
        ("delete-queued", "delete queue entries"),
    ):
        command(name, text).add_argument("image_ids", nargs="+", metavar="ID")
    for name, text in (
        ("delete-all-cached", "delete every cached image (needs --yes)"),
        ("delete-all-queued", "delete every queue entry (needs --yes)"),
    ):
        command(name, text).add_argument("--yes", action="store_true", help="really do it")
    p = command("check-config", "validate a config file and print the effective config")
    p.add_argument("path", nargs="?", help="config file to check (default: as -c)")
    return parser


# ----------------------------------------------------------------- plumbing


def _emit(args: argparse.Namespace, document: Any, human: Callable[[], str]) -> None:
    """Print ``document`` as JSON with --json, else the human rendering."""
    if getattr(args, "json", False):
        json.dump(document, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        text = human()
        if text:
            print(text)


def _load(args: argparse.Namespace, explicit_path: str | None = None) -> Any:
    from .config import load_config, resolve_config_path

    path, _explicit = resolve_config_path(explicit_path or args.config, os.environ)
    # only the commands that schedule need cron expressions parsed by APScheduler
    return load_config(path, check_schedules=args.command in ("run", "check-config"))


def _setup_logging(args: argparse.Namespace, config: Any | None) -> None:
    from .logging import configure_logging

    level = args.log_level or (config.logging.level if config else "info")
    fmt = args.log_format or (config.logging.format if config else "auto")
    configure_logging(level, fmt, stream=sys.stderr)


def _log_summary(outcome: Any) -> None:
    from .logging import get_logger
    from .runner import summary_fields

    get_logger("glance_cache_agent.cli").info("task finished", **summary_fields(outcome))


def _validate_ids(driver: Any, ids: Sequence[str]) -> list[str]:
    from .driver import image_id_problem

    for image_id in ids:
        problem = image_id_problem(image_id, driver.layout.reserved_names)
        if problem is not None:
            shown = image_id if len(image_id) <= 80 else image_id[:77] + "..."
            raise UsageError(f"invalid image id {shown!r}: {problem}")
    return list(ids)


# ----------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, config: Any) -> int:
    from .daemon import run_daemon

    return run_daemon(config, config_path=args.resolved_config, log_format=args.log_format)


def _maintenance(args: argparse.Namespace, config: Any, task: str, **overrides: Any) -> int:
    import signal
    import threading

    from .runner import run_task

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
            **overrides,
        )
    except Exception as exc:
        _emit_partial(args, exc, lambda r: r.to_dict(), lambda d: _render_result(task, d))
        raise
    _log_summary(outcome)
    document = outcome.result.to_dict()
    _emit(args, document, lambda: _render_result(task, document))
    return EXIT_OK if not document.get("errors") else EXIT_FAILED


def _option(value: str | None, parse: Callable[[str], Any], flag: str) -> Any:
    """Parse an optional flag's value with ``config``'s unit parsers (exit 2 if bad)."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cmd_clean(args: argparse.Namespace, config: Any) -> int:
    from .config import parse_duration

    stall_time = _option(args.stall_time, parse_duration, "--stall-time")
    return _maintenance(args, config, "clean", stall_time=stall_time)


def cmd_prune(args: argparse.Namespace, config: Any) -> int:
    from .config import parse_size

    max_size = _option(args.max_size, parse_size, "--max-size")
    return _maintenance(args, config, "prune", max_size=max_size)


def cmd_reconcile(args: argparse.Namespace, config: Any) -> int:
    return _maintenance(args, config, "reconcile")


def cmd_status(args: argparse.Namespace, config: Any) -> int:
    from .cache_state import compute_cache_state, status_document
    from .runner import open_driver

    driver = open_driver(config)
    state = compute_cache_state(driver, config.cache.max_size, per_image_limit=0)
    document = status_document(state, driver.base_dir)
    _emit(args, document, lambda: _render_status(document))
    return EXIT_OK


def cmd_list_cached(args: argparse.Namespace, config: Any) -> int:
    from .fmt import age, iec, table
    from .runner import open_driver

    entries = [
        {
            "image_id": row["image_id"],
            "size": int(row["size"]),
            "hits": int(row["hits"]),
            "last_accessed": row["last_accessed"],
            "last_modified": row["last_modified"],
        }
        for row in open_driver(config).get_cached_images()
    ]
    now = time.time()

    def human() -> str:
        if not entries:
            return "no cached images"
        rows = [
            [
                e["image_id"],
                iec(e["size"]),
                str(e["hits"]),
                age(now - e["last_accessed"]) + " ago",
                age(now - e["last_modified"]) + " ago",
            ]
            for e in entries
        ]
        head = ["IMAGE ID", "SIZE", "HITS", "LAST ACCESSED", "CACHED"]
        return table(head, rows, right=(1, 2))

    _emit(args, entries, human)
    return EXIT_OK


def cmd_list_queued(args: argparse.Namespace, config: Any) -> int:
    from .runner import open_driver

    queued = open_driver(config).get_queued_images()
    _emit(args, queued, lambda: "\n".join(queued) if queued else "no queued images")
    return EXIT_OK


def cmd_queue(args: argparse.Namespace, config: Any) -> int:
    from .runner import open_driver

    driver = open_driver(config)
    ids = _validate_ids(driver, args.image_ids)
    queued: list[str] = []
    skipped: dict[str, str] = {}
    for image_id in ids:
        if driver.is_cached(image_id):
            skipped[image_id] = "already cached"
        elif driver.is_being_cached(image_id):
            skipped[image_id] = "being cached"
        elif driver.queue_image(image_id):
            queued.append(image_id)
        else:
            skipped[image_id] = "already queued"
    lines = [f"queued {i}" for i in queued] + [f"not queued {i}: {r}" for i, r in skipped.items()]
    _emit(args, {"queued": queued, "not_queued": skipped}, lambda: "\n".join(lines))
    return EXIT_OK


def _emit_partial(
    args: argparse.Namespace,
    exc: BaseException,
    document: Callable[[Any], dict[str, Any]],
    human: Callable[[dict[str, Any]], str],
) -> None:
    """Print what a run that failed part-way did (its exception says why,
    and ``main`` prints that as the one error line); nothing if it did nothing."""
    from .maintenance.results import partial_result

    partial = partial_result(exc)
    if partial is not None:
        doc = document(partial)
        _emit(args, doc, lambda: human(doc))


def _deleting(
    args: argparse.Namespace,
    config: Any,
    delete: Callable[[], Any],
    document: Callable[[Any], dict[str, Any]],
    human: Callable[[dict[str, Any]], str],
) -> int:
    """Run ``delete()`` under the maintenance lock and print its DeleteResult;
    exit 1 when any id failed (every id's fate is in the document)."""
    from .locks import maintenance_lock

    with maintenance_lock(config.agent.runtime_dir, config.agent.lock_timeout):
        try:
            result = delete()
        except Exception as exc:
            _emit_partial(args, exc, document, human)
            raise
    doc = document(result)
    _emit(args, doc, lambda: human(doc))
    return EXIT_FAILED if doc.get("failed") or doc.get("error") else EXIT_OK


def _render_failures(d: dict[str, Any]) -> list[str]:
    """The lines of a delete document's failure fields."""
    return [f"failed {i}: {reason}" for i, reason in d.get("failed", {}).items()] + [
        f"not attempted {i}" for i in d.get("not_attempted", [])
    ]


def _delete_each(args: argparse.Namespace, config: Any, state: str) -> int:
    from .maintenance.delete import delete_cached_images, delete_queued_images
    from .runner import open_driver

    driver = open_driver(config)
    ids = _validate_ids(driver, args.image_ids)
    engine = delete_cached_images if state == "cached" else delete_queued_images

    def human(d: dict[str, Any]) -> str:
        lines = [f"deleted {i}" for i in d["deleted"]]
        lines += [f"not {state}: {i}" for i in d["not_found"]]
        return "\n".join(lines + _render_failures(d))

    return _deleting(args, config, lambda: engine(driver, ids), lambda r: r.to_dict(), human)


def cmd_delete_cached(args: argparse.Namespace, config: Any) -> int:
    return _delete_each(args, config, "cached")


def cmd_delete_queued(args: argparse.Namespace, config: Any) -> int:
    return _delete_each(args, config, "queued")


def _delete_all(args: argparse.Namespace, config: Any, what: str) -> int:
    from .locks import maintenance_lock
    from .runner import open_driver

    if not args.yes:
        raise UsageError(f"delete-all-{what} deletes every {what} entry; add --yes to confirm")
    driver = open_driver(config)
    if what == "cached":
        from .maintenance.delete import delete_all_cached_images

        return _deleting(
            args,
            config,
            lambda: delete_all_cached_images(driver),
            lambda r: {"deleted": len(r.deleted), **r.failure_fields()},
            lambda d: "\n".join([f"deleted {d['deleted']} cached images", *_render_failures(d)]),
        )
    with maintenance_lock(config.agent.runtime_dir, config.agent.lock_timeout):
        count = driver.delete_all_queued_images()
    _emit(args, {"deleted": count}, lambda: f"deleted {count} queue entries")
    return EXIT_OK


def cmd_delete_all_cached(args: argparse.Namespace, config: Any) -> int:
    return _delete_all(args, config, "cached")


def cmd_delete_all_queued(args: argparse.Namespace, config: Any) -> int:
    return _delete_all(args, config, "queued")


def cmd_check_config(args: argparse.Namespace, config: Any) -> int:
    from .config import config_warnings, effective_config_dict, render_effective_config

    warnings = config_warnings(config)
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    _emit(
        args,
        {**effective_config_dict(config), "warnings": warnings},
        lambda: f"{config.path or 'built-in defaults'}: OK\n\n{render_effective_config(config)}",
    )
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "run": cmd_run,
    "clean": cmd_clean,
    "prune": cmd_prune,
    "reconcile": cmd_reconcile,
    "status": cmd_status,
    "list-cached": cmd_list_cached,
    "list-queued": cmd_list_queued,
    "queue": cmd_queue,
    "delete-cached": cmd_delete_cached,
    "delete-queued": cmd_delete_queued,
    "delete-all-cached": cmd_delete_all_cached,
    "delete-all-queued": cmd_delete_all_queued,
    "check-config": cmd_check_config,
}


# ---------------------------------------------------------------- rendering


def _render_result(task: str, d: dict[str, Any]) -> str:
    from .fmt import iec

    verb = "would " if d["dry_run"] else ""
    if task == "clean":
        lines = [
            f"{'Would remove' if d['dry_run'] else 'Removed'} {d['invalid_removed']} invalid"
            f" and {d['stalled_removed']} stalled files ({iec(d['bytes_freed'])})",
            *(f"  {path}" for path in d["files"]),
        ]
        if d["skipped_active"]:
            lines.append(f"kept {d['skipped_active']} incomplete files still being written")
        if d["skipped_future"]:
            lines.append(f"kept {d['skipped_future']} files with an mtime in the future")
    elif task == "prune":
        lines = [
            f"{'Would evict' if d['dry_run'] else 'Evicted'} {d['pruned_images']} images"
            f" ({iec(d['pruned_bytes'])}): {iec(d['size_before'])} -> {iec(d['size_after'])},"
            f" target {iec(d['target_bytes'])}, stopped: {d['stopped_by']}",
            *(f"  {image_id}" for image_id in d["images"]),
        ]
        if d["stopped_by"] == "untracked":
            lines.append(
                f"untracked files hold {iec(d['untracked_bytes'])}, more than the target:"
                " run 'reconcile' to adopt or remove them"
            )
    else:
        lines = [
            f"orphans: {verb}adopt {d['orphans_adopted']}, {verb}remove {d['orphans_removed']},"
            f" report {d['orphans_reported']}, within grace {d['orphans_in_grace']}",
            f"phantom rows: {verb}remove {d['phantoms_removed']}",
            f"sizes: {verb}fix {d['sizes_fixed']}",
            f"queue entries of cached images: {verb}remove {d['queue_entries_removed']}",
        ]
        action = {"adopt": "adopt", "delete": "remove", "report": "report"}[d["orphan_policy"]]
        lines += [f"  orphan {image_id}: {verb}{action}" for image_id in d["orphans"]]
        lines += [f"  phantom row {image_id}: {verb}remove" for image_id in d["phantoms"]]
        if d["invalid_rows_removed"]:
            lines.append(f"rows with non-UUID ids: {verb}remove {d['invalid_rows_removed']}")
        lines += [
            f"  row with non-UUID id {image_id or 'NULL'}: {verb}remove"
            for image_id in d["invalid_rows"]
        ]
    lines += [f"error: {e}" for e in d.get("errors", [])]
    return "\n".join(lines)


def _foreign_summary(d: dict[str, Any]) -> str:
    """``N (name, name, ...)``: files that are not images, which nothing touches."""
    names = d["foreign"]
    if not names:
        return str(d["foreign_files"])
    more = d["foreign_files"] - len(names)
    listed = ", ".join(names) + (f", and {more} more" if more else "")
    return f"{d['foreign_files']} ({listed}; never touched)"


def _render_status(d: dict[str, Any]) -> str:
    from .fmt import iec

    rows = [
        ("cache", d["cache_dir"]),
        ("size", f"{iec(d['size_bytes'])} of {iec(d['max_size_bytes'])}"),
        ("cached images", str(d["cached_images"])),
        ("queued images", str(d["queued_images"])),
        ("incomplete files", str(d["incomplete_files"])),
        ("invalid files", str(d["invalid_files"])),
        ("orphan files", f"{d['orphan_files']} ({iec(d['untracked_bytes'])} untracked)"),
        ("phantom rows", str(d["phantom_rows"])),
        ("foreign files", _foreign_summary(d)),
        ("filesystem free", iec(d["filesystem_free_bytes"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command; map failures to exit codes."""
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    config = None
    if args.config == "" or getattr(args, "path", None) == "":
        return _fail("error: the config path is empty", EXIT_USAGE)
    try:
        explicit = args.path if args.command == "check-config" else None
        config = _load(args, explicit)
        args.resolved_config = config.path
        _setup_logging(args, config)
        return COMMANDS[args.command](args, config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - mapped to documented exit codes below
        return _fail_known(exc)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _fail_known(exc: Exception) -> int:
    from .driver import DriverError, InvalidImageId, LockTimeout
    from .locks import LockBusy

    if isinstance(exc, LockBusy | LockTimeout):
        return _fail(str(exc), EXIT_LOCKED)
    if isinstance(exc, InvalidImageId):
        return _fail(str(exc), EXIT_USAGE)
    if isinstance(exc, DriverError):
        return _fail(str(exc), EXIT_FAILED)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_FAILED)
    raise exc


if __name__ == "__main__":
    raise SystemExit(main())
