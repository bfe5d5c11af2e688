"""``run``: the daemon (scheduler, metrics endpoint, sd_notify)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...config import Config


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """Run the daemon until it is stopped; its exit code is the command's."""
    from ...service.daemon import run_daemon

    return run_daemon(config, config_path=args.resolved_config, log_format=args.log_format)
