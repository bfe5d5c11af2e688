"""Printing a command's result: one JSON document with ``--json``, else text.

Documents go to stdout and nothing else does (logs and errors go to stderr),
so ``--json`` output can be piped straight into ``jq`` or Ansible.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

from ..maintenance.results import Report, partial_result

__all__ = ["emit", "emit_partial"]

R = TypeVar("R", bound=Report)


def emit(args: argparse.Namespace, document: object, human: Callable[[], str]) -> None:
    """Print ``document`` as JSON with --json, else the human rendering (if any)."""
    if getattr(args, "json", False):
        json.dump(document, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        text = human()
        if text:
            print(text)


def emit_partial(
    args: argparse.Namespace,
    exc: BaseException,
    kind: type[R],
    document: Callable[[R], object],
    human: Callable[[R], str],
) -> None:
    """Print what a run that failed part-way did (its exception says why, and
    ``main`` prints that as the one error line); nothing if it did nothing."""
    partial = partial_result(exc)
    if isinstance(partial, kind):
        emit(args, document(partial), lambda: human(partial))
