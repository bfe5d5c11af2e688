"""Typed results of maintenance runs; ``to_dict()`` is the ``--json`` document.

The same types describe a dry run and a real run: a dry run returns exactly
the document the real run would, with ``dry_run`` true.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..driver import delete_cached_file
from ..driver.crashpoints import crash_point
from ..log import get_logger

LOG = get_logger("glance_cache_agent.maintenance")


def note_failure(errors: list[str], path: str, exc: OSError) -> None:
    """Log a file operation that failed and record it in a result's ``errors``.

    Maintenance skips what it cannot delete and carries on; the run's result
    and the log both say what was skipped.
    """
    LOG.warning("failed to remove file; skipping it", path=path, error=str(exc))
    errors.append(f"{path}: {exc.strerror or exc}")


def try_remove(path: str, errors: list[str]) -> bool:
    """Delete ``path`` (already gone is fine); on failure note it and return False."""
    try:
        delete_cached_file(path)
    except OSError as exc:
        note_failure(errors, path, exc)
        return False
    crash_point("remove")  # test-only; off unless armed
    return True


@runtime_checkable
class Report(Protocol):
    """Anything a command prints as its ``--json`` document."""

    def to_dict(self) -> dict[str, Any]: ...


#: the attribute under which a failed run's exception carries its partial result
_PARTIAL = "partial_result"


def fail_partway(exc: BaseException, result: Report) -> None:
    """Let ``exc`` carry what the run did before it failed.

    The exception keeps its type (callers still catch DatabaseLocked,
    DatabaseReadOnly, OSError as before) and the CLI can still print what
    was done and what was not (``partial_result``).
    """
    setattr(exc, _PARTIAL, result)


def partial_result(exc: BaseException) -> Report | None:
    """The result a failed run attached to its exception, if any."""
    found = getattr(exc, _PARTIAL, None)
    return found if isinstance(found, Report) else None


@dataclass
class _Result:
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CleanResult(_Result):
    """What a clean removed (or would remove) from ``invalid/`` and ``incomplete/``."""

    invalid_removed: int = 0
    stalled_removed: int = 0
    bytes_freed: int = 0
    invalid_bytes: int = 0
    stalled_bytes: int = 0
    #: incomplete files kept because a process is writing them (open for
    #: writing, or still changing between two observations)
    skipped_active: int = 0
    #: files kept because their mtime lies in the future (clock trouble)
    skipped_future: int = 0
    #: invalid files kept because they are younger than ``invalid_grace``
    invalid_in_grace: int = 0
    #: processes whose open files could not be read when stalled files were
    #: checked (another user's, or not dumpable, while the agent is not root):
    #: a download held by one of them is not recognised. 0 when no file was
    #: old enough to need the check.
    uninspectable_processes: int = 0
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class PruneResult(_Result):
    """What a prune evicted (or would evict), and why it stopped."""

    target_bytes: int = 0
    size_before: int = 0
    size_after: int = 0
    pruned_images: int = 0
    pruned_bytes: int = 0
    images: list[str] = field(default_factory=list)
    max_size_bytes: int = 0
    #: ``size``, ``free_space`` or ``idle``; None when nothing triggered a prune
    trigger: str | None = None
    #: ``not_triggered``, ``target_reached``, ``max_images``, ``time_budget``,
    #: ``untracked`` (untracked bytes alone exceed the target) or
    #: ``no_candidates`` (every remaining image is protected) or
    #: ``victims_changed`` (victims were read, re-cached or could not be
    #: deleted after planning, so the target was not reached this run) or
    #: ``stopped`` (the agent was asked to shut down between two batches) or
    #: ``error`` (the database or directory failed: see ``error``)
    stopped_by: str = "not_triggered"
    #: bytes of image files without a row: part of the size, never evictable
    #: (foreign files are not part of the size, so not counted here; status
    #: and the metric add them)
    untracked_bytes: int = 0
    #: hits the evicted images had (keeps a monotonic hit counter monotonic)
    hits_evicted: int = 0
    idle_images: int = 0
    #: evicted images Glance deleted (centralized_db with SELECT on ``images``):
    #: evicted first, whatever their last access
    dead_images: int = 0
    protected_skipped: int = 0
    #: victims left alone because they changed after planning (read, re-cached, gone)
    skipped_images: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: why the run stopped part-way (``stopped_by: error``); None when it did not
    error: str | None = None


@dataclass
class ReconcileResult(_Result):
    """How the database and the directory were brought back into agreement."""

    orphans_adopted: int = 0
    orphans_removed: int = 0
    orphans_reported: int = 0
    orphans_in_grace: int = 0
    orphan_bytes: int = 0
    phantoms_removed: int = 0
    sizes_fixed: int = 0
    queue_entries_removed: int = 0
    #: what was done with orphans past their grace: adopt, delete or report
    orphan_policy: str = "adopt"
    orphans: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)
    #: rows whose id is not a UUID (NULL, ``README``...): never servable, removed
    invalid_rows_removed: int = 0
    #: their ids, one per row; a NULL id is shown as ""
    invalid_rows: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class DeleteResult:
    """What ``delete-cached`` or ``delete-all-cached`` removed, and what not."""

    deleted: list[str] = field(default_factory=list)
    #: ids with no cached file (a row of theirs, if any, is deleted all the same)
    not_found: list[str] = field(default_factory=list)
    #: id -> why its file or row could not be deleted; the other ids were still tried
    failed: dict[str, str] = field(default_factory=dict)
    #: ids never tried because the run stopped on ``error``
    not_attempted: list[str] = field(default_factory=list)
    #: why the run stopped part-way (a database or directory failure)
    error: str | None = None

    def failure_fields(self) -> dict[str, Any]:
        """``failed``, ``not_attempted`` and ``error`` when anything failed, else nothing,
        so the document of a run that succeeded keeps its usual keys only."""
        if not (self.failed or self.not_attempted or self.error):
            return {}
        return {"failed": self.failed, "not_attempted": self.not_attempted, "error": self.error}

    def to_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "not_found": self.not_found, **self.failure_fields()}
