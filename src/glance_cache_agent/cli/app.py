"""``glance-cache-agent``: parse, load the config, run one command, map failures.

Every data-producing command prints, with ``--json``, exactly one JSON
document on stdout; logs and errors go to stderr. Exit codes
(``errors.ExitCode``): 0 done, 1 the operation failed, 2 usage error, 75
another maintenance run holds the lock, 78 configuration error. Commands
other than ``run`` import only what they need, so a maintenance command
starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ExitCode
from .parser import PROG, build_parser

if TYPE_CHECKING:
    from ..config import Config


def _load(args: argparse.Namespace) -> Config:
    """The config named by ``check-config PATH``, ``-c``, the environment or the default."""
    from ..config import load_config, resolve_config_path

    explicit = args.path if args.command == "check-config" else None
    path, _explicit = resolve_config_path(explicit or args.config, os.environ)
    # only the commands that schedule need cron expressions parsed by APScheduler
    return load_config(path, check_schedules=args.command in ("run", "check-config"))


def _setup_logging(args: argparse.Namespace, config: Config) -> None:
    """Command-line flags win over the config's ``logging`` section; logs go to stderr."""
    from ..service.logs import configure_logging

    level = args.log_level or config.logging.level
    fmt = args.log_format or config.logging.format
    configure_logging(level, fmt, stream=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command; map failures to exit codes.

    A failure the agent knows (``cli.errors.failure``) prints one line and
    returns its exit code; anything else is a bug and propagates.
    """
    args = build_parser().parse_args(argv)
    if args.config == "" or getattr(args, "path", None) == "":
        return _fail("error: the config path is empty", ExitCode.USAGE)
    try:
        from .commands import COMMANDS

        config = _load(args)
        args.resolved_config = config.path
        _setup_logging(args, config)
        return COMMANDS[args.command](args, config)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitCode.FAILED)
    except Exception as exc:
        from .errors import failure

        known = failure(exc)
        if known is None:
            raise
        return _fail(*known)
