"""``check-config``: validate a config file and print the effective configuration."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ...errors import ExitCode
from ..output import emit
from ..parser import PROG

if TYPE_CHECKING:
    from ...config import Config


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    """Warnings on stderr; the effective config (and the warnings) on stdout."""
    from ...config import config_warnings, effective_config_dict, render_effective_config

    warnings = config_warnings(config)
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    emit(
        args,
        {**effective_config_dict(config), "warnings": warnings},
        lambda: f"{config.path or 'built-in defaults'}: OK\n\n{render_effective_config(config)}",
    )
    return ExitCode.OK
