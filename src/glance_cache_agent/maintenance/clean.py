"""Clean: remove invalid files and stalled incomplete files, never live downloads.

Glance's cleaner deletes every ``incomplete/`` file older than ``stall_time``
by mtime alone, so a short stall time kills downloads in flight. We keep a
file when either test says it is alive:

* some process holds it open for writing (``/proc``, matched by inode, so a
  writer in another mount namespace such as a container counts), or
* it changed (size, mtime or inode) between the plan's observation and the
  one taken just before deleting it.

A file whose mtime lies in the future is kept and reported: the clock, not
the file, is suspect. Processes whose descriptors the agent may not read are
counted in ``uninspectable_processes``: a download held by one of them would
not be recognised (run as root, or as glance-api's user, for full protection).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..driver import CacheDriver, FileIdentity, FileInfo, external_lock, scan_writers
from ..log import get_logger
from .results import CleanResult, try_remove

LOCK_NAME = "glance-cache-clean"
LOG = get_logger("glance_cache_agent.maintenance")


@dataclass(frozen=True)
class CleanPolicy:
    """How old files must be before clean removes them."""

    #: incomplete files whose mtime is strictly older than now - stall_time go
    stall_time: float = 86400.0
    #: invalid files younger than this are kept (0: Glance's "remove at once")
    invalid_grace: float = 0.0
    #: pause between the two observations of stalled files; 0 skips the pause
    settle_time: float = 1.0


@dataclass
class CleanPlan:
    """Files chosen for removal, and the ones kept with the reason."""

    invalid: list[FileInfo] = field(default_factory=list)
    stalled: list[FileInfo] = field(default_factory=list)
    active: list[FileInfo] = field(default_factory=list)
    future: list[FileInfo] = field(default_factory=list)
    invalid_in_grace: list[FileInfo] = field(default_factory=list)
    #: processes whose descriptors could not be read while planning
    uninspectable: int = 0

    def result(self, dry_run: bool) -> CleanResult:
        invalid_bytes = sum(i.size for i in self.invalid)
        stalled_bytes = sum(i.size for i in self.stalled)
        return CleanResult(
            dry_run=dry_run,
            invalid_removed=len(self.invalid),
            stalled_removed=len(self.stalled),
            bytes_freed=invalid_bytes + stalled_bytes,
            invalid_bytes=invalid_bytes,
            stalled_bytes=stalled_bytes,
            skipped_active=len(self.active),
            skipped_future=len(self.future),
            invalid_in_grace=len(self.invalid_in_grace),
            uninspectable_processes=self.uninspectable,
            files=[i.path for i in (*self.invalid, *self.stalled)],
        )


def plan_clean(
    invalid: list[FileInfo],
    incomplete: list[FileInfo],
    policy: CleanPolicy,
    now: float,
    busy: set[FileIdentity] | frozenset[FileIdentity] = frozenset(),
) -> CleanPlan:
    """Decide over scans of ``invalid/`` and ``incomplete/``; touches nothing.

    ``busy`` holds ``(device, inode)`` of files open for writing.
    """
    plan = CleanPlan()
    for info in sorted(invalid, key=lambda i: i.name):
        if policy.invalid_grace <= 0:
            plan.invalid.append(info)
        elif info.mtime > now:
            plan.future.append(info)
        elif now - info.mtime >= policy.invalid_grace:
            plan.invalid.append(info)
        else:
            plan.invalid_in_grace.append(info)
    cutoff = now - policy.stall_time
    for info in sorted(incomplete, key=lambda i: i.name):
        if info.mtime > now:
            plan.future.append(info)
        elif info.mtime < cutoff:
            if (info.device, info.inode) in busy:
                plan.active.append(info)
            else:
                plan.stalled.append(info)
    return plan


def _identities(files: list[FileInfo]) -> set[FileIdentity]:
    return {(i.device, i.inode) for i in files}


def _remove_unchanged(
    info: FileInfo, result: CleanResult, busy: frozenset[FileIdentity] = frozenset()
) -> bool:
    """Delete ``info`` if it is exactly as planned and nobody writes it."""
    try:
        st = os.lstat(info.path)
    except FileNotFoundError:
        return False  # already gone: nothing freed by us
    if not info.same_file(st) or (st.st_dev, st.st_ino) in busy:
        result.skipped_active += 1
        return False
    return try_remove(info.path, result.errors)


def execute_clean(
    driver: CacheDriver,
    plan: CleanPlan,
    policy: CleanPolicy,
    pause: Callable[[float], None] = time.sleep,
) -> CleanResult:
    """Carry out a plan, re-checking every stalled file before deleting it."""
    result = CleanResult(
        dry_run=False,
        skipped_active=len(plan.active),
        skipped_future=len(plan.future),
        invalid_in_grace=len(plan.invalid_in_grace),
        uninspectable_processes=plan.uninspectable,
    )
    for info in plan.invalid:
        if _remove_unchanged(info, result):
            result.invalid_removed += 1
            result.invalid_bytes += info.size
            result.files.append(info.path)
    if plan.stalled:
        if policy.settle_time > 0:
            pause(policy.settle_time)
        scan = scan_writers(_identities(plan.stalled))
        result.uninspectable_processes = scan.uninspectable
        for info in plan.stalled:
            if _remove_unchanged(info, result, scan.busy):
                result.stalled_removed += 1
                result.stalled_bytes += info.size
                result.files.append(info.path)
    result.bytes_freed = result.invalid_bytes + result.stalled_bytes
    return result


def run_clean(
    driver: CacheDriver,
    policy: CleanPolicy,
    *,
    dry_run: bool = False,
    now: float | None = None,
    lock_timeout: float | None = 60.0,
    pause: Callable[[float], None] = time.sleep,
) -> CleanResult:
    """Plan and (unless ``dry_run``) execute a clean under Glance's clean lock."""

    def plan() -> CleanPlan:
        incomplete = driver.scan_state("incomplete")
        moment = time.time() if now is None else now
        old = [i for i in incomplete if i.mtime < moment - policy.stall_time]
        scan = scan_writers(_identities(old))
        made = plan_clean(driver.scan_state("invalid"), incomplete, policy, moment, scan.busy)
        made.uninspectable = scan.uninspectable
        return made

    if dry_run:
        result = plan().result(dry_run=True)
    else:
        with external_lock(driver.lock_dir, LOCK_NAME, timeout=lock_timeout):
            result = execute_clean(driver, plan(), policy, pause)
    _warn_if_blind(result)
    return result


def _warn_if_blind(result: CleanResult) -> None:
    """Say so when some writer could have gone unseen."""
    if result.uninspectable_processes:
        LOG.warning(
            "could not inspect the open files of processes (another user's, a non-dumpable"
            " or a more privileged one); a stalled-looking download held by one of them is not"
            " recognised. Run the agent as root, or as glance-api's user with glance-api dumpable",
            processes=result.uninspectable_processes,
        )
