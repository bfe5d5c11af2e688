"""The argument parser: every subcommand of DESIGN section 4, nothing else.

Building it imports nothing heavy, so ``--help`` and usage errors are fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .. import __version__
from ..errors import ExitCode

PROG = "glance-cache-agent"


class _Parser(argparse.ArgumentParser):
    """Usage errors print the usage line and exit ``ExitCode.USAGE``, by name."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


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
    p = command("nodes", "every node's cache from Glance's database (centralized_db; read-only)")
    p.add_argument("image_id", nargs="?", metavar="IMAGE_ID", help="only the nodes caching it")
    p = command("check-config", "validate a config file and print the effective config")
    p.add_argument("path", nargs="?", help="config file to check (default: as -c)")
    return parser
