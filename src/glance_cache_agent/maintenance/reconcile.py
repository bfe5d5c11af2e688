"""Reconcile: bring ``cache.db`` and the base directory back into agreement.

Glance has no such step, so its caches drift: files without rows (orphans)
count toward the size but are never pruned, rows without files (phantoms)
are listed and "pruned" at 0 bytes, and a re-cache behind an existing row
leaves its size wrong. Reconcile fixes each, and never touches lock files,
the database or its side files, or files whose name is not a UUID (Glance
issues only UUIDs: an operator's ``backup`` is foreign, never adopted).
Rows whose id is not a UUID (NULL, ``README``, ``queue``) can never be
served by Glance: reconcile removes them.

Orphans younger than ``orphan_grace`` are left alone: Glance renames a file
into place *before* inserting its row, so a brand-new file has no row yet.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from ..driver import CacheDriver, CachedRow, FileInfo, external_lock
from .clean import LOCK_NAME as CLEAN_LOCK
from .prune import LOCK_NAME as PRUNE_LOCK
from .results import ReconcileResult, try_remove
from .snapshot import CacheSnapshot, take_snapshot


class OrphanPolicy(enum.Enum):
    """What to do with an image file that has no row, once past the grace."""

    ADOPT = "adopt"  # give it a row from stat, so prune can evict it
    DELETE = "delete"
    REPORT = "report"  # count it, change nothing


@dataclass(frozen=True)
class ReconcilePolicy:
    orphan_grace: float = 600.0
    orphans: OrphanPolicy = OrphanPolicy.ADOPT


@dataclass
class ReconcilePlan:
    orphans: list[FileInfo] = field(default_factory=list)
    orphans_in_grace: list[FileInfo] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)
    #: ids of rows that are not UUIDs, one per row ("" for a NULL id)
    invalid_rows: list[str] = field(default_factory=list)
    sizes: list[tuple[CachedRow, FileInfo]] = field(default_factory=list)
    stale_queue: list[FileInfo] = field(default_factory=list)
    policy: ReconcilePolicy = field(default_factory=ReconcilePolicy)

    def result(self, dry_run: bool) -> ReconcileResult:
        mode = self.policy.orphans
        count = len(self.orphans)
        return ReconcileResult(
            dry_run=dry_run,
            orphans_adopted=count if mode is OrphanPolicy.ADOPT else 0,
            orphans_removed=count if mode is OrphanPolicy.DELETE else 0,
            orphans_reported=count if mode is OrphanPolicy.REPORT else 0,
            orphans_in_grace=len(self.orphans_in_grace),
            orphan_bytes=sum(i.size for i in self.orphans),
            phantoms_removed=len(self.phantoms),
            sizes_fixed=len(self.sizes),
            queue_entries_removed=len(self.stale_queue),
            orphan_policy=mode.value,
            orphans=[i.name for i in self.orphans],
            phantoms=list(self.phantoms),
            invalid_rows_removed=len(self.invalid_rows),
            invalid_rows=list(self.invalid_rows),
        )


def plan_reconcile(
    snapshot: CacheSnapshot, queue: list[FileInfo], policy: ReconcilePolicy
) -> ReconcilePlan:
    """Classify the disagreements between rows and files; touches nothing.

    An orphan's age is measured from the newer of its mtime and ctime (a
    rename into place updates ctime), so a just-committed file is young even
    when the image data is old.
    """
    plan = ReconcilePlan(policy=policy)
    for info in snapshot.orphans():
        age = snapshot.taken_at - max(info.mtime, info.ctime)
        (plan.orphans if age >= policy.orphan_grace else plan.orphans_in_grace).append(info)
    plan.phantoms = snapshot.phantoms()
    plan.invalid_rows = list(snapshot.invalid_rows)
    for _key, (row, info) in sorted(snapshot.tracked().items()):
        if row.size != info.size:
            plan.sizes.append((row, info))
    plan.stale_queue = sorted(
        (q for q in queue if q.name in snapshot.base.images), key=lambda q: q.name
    )
    return plan


def _unchanged(info: FileInfo) -> bool:
    try:
        return info.same_file(os.lstat(info.path))
    except FileNotFoundError:
        return False


def execute_reconcile(driver: CacheDriver, plan: ReconcilePlan) -> ReconcileResult:
    """Apply a plan, re-checking each item against the live state first."""
    result = ReconcileResult(
        dry_run=False,
        orphans_in_grace=len(plan.orphans_in_grace),
        orphan_policy=plan.policy.orphans.value,
        orphans=[i.name for i in plan.orphans],
    )
    mode = plan.policy.orphans
    orphans = [i for i in plan.orphans if _unchanged(i)]
    result.orphan_bytes = sum(i.size for i in orphans)
    if mode is OrphanPolicy.ADOPT:
        result.orphans_adopted = driver.adopt_files(orphans)
    elif mode is OrphanPolicy.DELETE:
        rows_now = driver.store.rows_by_id(i.name for i in orphans)
        for info in orphans:
            if info.name not in rows_now and try_remove(info.path, result.errors):
                result.orphans_removed += 1  # (a row Glance inserted meanwhile keeps its file)
    else:
        result.orphans_reported = len(orphans)

    result.phantoms_removed = driver.delete_rows(plan.phantoms, only_if_file_missing=True)
    result.phantoms = list(plan.phantoms)
    result.invalid_rows_removed = driver.store.delete_invalid_rows(plan.invalid_rows)
    result.invalid_rows = list(plan.invalid_rows)
    result.sizes_fixed = driver.store.set_sizes(
        [(row.image_id, info.size) for row, info in plan.sizes if _unchanged(info)]
    )
    for entry in plan.stale_queue:
        cached = os.path.exists(driver.layout.image_path(entry.name))
        if cached and try_remove(entry.path, result.errors):
            result.queue_entries_removed += 1
    return result


def run_reconcile(
    driver: CacheDriver,
    policy: ReconcilePolicy,
    *,
    dry_run: bool = False,
    now: float | None = None,
    lock_timeout: float | None = 60.0,
) -> ReconcileResult:
    """Snapshot, plan and (unless ``dry_run``) apply, under both Glance locks.

    Reconcile edits rows and deletes files, so it excludes both Glance's
    prune and clean (taken in that fixed order; Glance never nests them).
    """

    def plan() -> ReconcilePlan:
        snapshot = take_snapshot(driver, now)
        return plan_reconcile(snapshot, driver.scan_state("queue"), policy)

    if dry_run:
        return plan().result(dry_run=True)
    with (
        external_lock(driver.lock_dir, CLEAN_LOCK, timeout=lock_timeout),
        external_lock(driver.lock_dir, PRUNE_LOCK, timeout=lock_timeout),
    ):
        return execute_reconcile(driver, plan())
