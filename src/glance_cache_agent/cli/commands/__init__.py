"""One module per family of commands; ``COMMANDS`` maps each name to its function.

Every command takes the parsed arguments and the loaded configuration and
returns its exit code. Modules import what they need when called, so a
maintenance command never pays for APScheduler or the HTTP server.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import check_config, images, maintenance, nodes, run, status

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["COMMANDS", "Command"]

Command = Callable[[argparse.Namespace, "Config"], int]

COMMANDS: dict[str, Command] = {
    "run": run.cmd_run,
    "clean": maintenance.cmd_clean,
    "prune": maintenance.cmd_prune,
    "reconcile": maintenance.cmd_reconcile,
    "status": status.cmd_status,
    "list-cached": status.cmd_list_cached,
    "list-queued": status.cmd_list_queued,
    "queue": images.cmd_queue,
    "delete-cached": images.cmd_delete_cached,
    "delete-queued": images.cmd_delete_queued,
    "delete-all-cached": images.cmd_delete_all_cached,
    "delete-all-queued": images.cmd_delete_all_queued,
    "check-config": check_config.cmd_check_config,
    "nodes": nodes.cmd_nodes,
}
