"""``queue``, ``delete-cached``, ``delete-queued`` and ``delete-all-*``: per-image actions.

Deletions run under the maintenance lock (a prune must not plan around an
image being deleted) and report every id's fate; one id that fails does not
stop the others.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...errors import ExitCode
from ...maintenance.results import DeleteResult
from ..errors import UsageError
from ..output import emit, emit_partial
from ..render import render_delete, render_delete_all

if TYPE_CHECKING:
    from ...config import Config
    from ...driver import CacheDriver


def _validate_ids(driver: CacheDriver, ids: Sequence[str]) -> list[str]:
    """``ids`` unchanged, or a UsageError (exit 2) naming the first bad one."""
    from ...driver import image_id_problem

    for image_id in ids:
        problem = image_id_problem(image_id, driver.layout.reserved_names)
        if problem is not None:
            shown = image_id if len(image_id) <= 80 else image_id[:77] + "..."
            raise UsageError(f"invalid image id {shown!r}: {problem}")
    return list(ids)


def cmd_queue(args: argparse.Namespace, config: Config) -> int:
    """Queue images for caching; say why any id was not queued."""
    from ...service.runner import open_driver

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
    emit(args, {"queued": queued, "not_queued": skipped}, lambda: "\n".join(lines))
    return ExitCode.OK


def _deleting(
    args: argparse.Namespace,
    config: Config,
    delete: Callable[[], DeleteResult],
    document: Callable[[DeleteResult], object],
    human: Callable[[DeleteResult], str],
) -> int:
    """Run ``delete()`` under the maintenance lock and print its DeleteResult;
    exit 1 when any id failed (every id's fate is in the document)."""
    from ...service.locks import maintenance_lock

    with maintenance_lock(config.agent.runtime_dir, config.agent.lock_timeout):
        try:
            result = delete()
        except Exception as exc:
            emit_partial(args, exc, DeleteResult, document, human)
            raise
    emit(args, document(result), lambda: human(result))
    return ExitCode.FAILED if result.failed or result.error else ExitCode.OK


def _delete_each(args: argparse.Namespace, config: Config, state: str) -> int:
    from ...maintenance.delete import delete_cached_images, delete_queued_images
    from ...service.runner import open_driver

    driver = open_driver(config)
    ids = _validate_ids(driver, args.image_ids)
    engine = delete_cached_images if state == "cached" else delete_queued_images
    return _deleting(
        args,
        config,
        lambda: engine(driver, ids),
        DeleteResult.to_dict,
        lambda r: render_delete(r, state),
    )


def cmd_delete_cached(args: argparse.Namespace, config: Config) -> int:
    """Delete the given cached images (file and row)."""
    return _delete_each(args, config, "cached")


def cmd_delete_queued(args: argparse.Namespace, config: Config) -> int:
    """Delete the given queue entries."""
    return _delete_each(args, config, "queued")


def _confirmed(args: argparse.Namespace, what: str) -> None:
    if not args.yes:
        raise UsageError(f"delete-all-{what} deletes every {what} entry; add --yes to confirm")


def cmd_delete_all_cached(args: argparse.Namespace, config: Config) -> int:
    """Delete every cached image (needs --yes); foreign files are left alone."""
    from ...maintenance.delete import delete_all_cached_images
    from ...service.runner import open_driver

    _confirmed(args, "cached")
    driver = open_driver(config)
    return _deleting(
        args,
        config,
        lambda: delete_all_cached_images(driver),
        lambda r: {"deleted": len(r.deleted), **r.failure_fields()},
        render_delete_all,
    )


def cmd_delete_all_queued(args: argparse.Namespace, config: Config) -> int:
    """Delete every queue entry (needs --yes)."""
    from ...service.locks import maintenance_lock
    from ...service.runner import open_driver

    _confirmed(args, "queued")
    driver = open_driver(config)
    with maintenance_lock(config.agent.runtime_dir, config.agent.lock_timeout):
        count = driver.delete_all_queued_images()
    emit(args, {"deleted": count}, lambda: f"deleted {count} queue entries")
    return ExitCode.OK
