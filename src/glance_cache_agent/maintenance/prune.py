"""Prune: evict least recently accessed images until the cache fits.

Glance's pruner runs one full-table ``ORDER BY`` per victim on a fresh
connection and, when untracked files alone exceed the limit, evicts every
image and still ends over it. Ours plans once over a snapshot (one read, one
scan), then evicts in batches: unlink the files, fsync the directory, delete
the rows in one short ``BEGIN IMMEDIATE`` transaction, pause, repeat.

The file goes before the row: a crash in between leaves a harmless phantom
row (reconcile drops it), never an orphan file nobody would prune.

Images Glance deleted (a store that can tell: ``dead_rows``) come
first in the eviction order, before any LRU victim: nobody can read them
again. They are still victims like the others: evicted only when the run
is triggered and until the target, never when protected, and through the
same compare-and-delete.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..driver import (
    CacheDriver,
    CachedRow,
    DriverError,
    FileInfo,
    external_lock,
    fsync_directory,
)
from ..driver.crashpoints import crash_point
from ..driver.store import dead_rows
from .idle import ClockStep, idle_clock
from .results import PruneResult, fail_partway, note_failure
from .snapshot import PruneView, take_streaming_snapshot

LOCK_NAME = "glance-cache-prune"


@dataclass(frozen=True)
class PrunePolicy:
    """When to prune, down to where, and how much one run may do."""

    max_size: int
    #: prune down to this fraction of ``max_size`` once over it (1.0: Glance)
    low_watermark: float = 1.0
    #: also prune while the filesystem has less free space than this
    min_free_bytes: int = 0
    min_free_percent: float = 0.0
    #: evict images not read for this many seconds, whatever the size
    max_idle: float | None = None
    protected_images: frozenset[str] = frozenset()
    max_images_per_run: int | None = None
    #: seconds one run may spend evicting; checked between batches
    time_budget: float | None = None
    batch_size: int = 500
    #: pause between batches so Glance's 50 ms lock polling gets a turn
    batch_pause: float = 0.1

    def required_free_bytes(self, total_bytes: int) -> int:
        by_percent = math.ceil(total_bytes * self.min_free_percent / 100.0)
        return max(self.min_free_bytes, by_percent)


@dataclass(frozen=True)
class Victim:
    """An image chosen for eviction, as the snapshot saw it."""

    row: CachedRow
    file: FileInfo
    idle: bool
    #: Glance deleted the image: it can never be served again
    dead: bool = False

    @property
    def image_id(self) -> str:
        return self.row.image_id


@dataclass
class PrunePlan:
    """The victims in eviction order, and the facts behind the choice."""

    size_before: int
    target_bytes: int
    max_size: int
    trigger: str | None
    stopped_by: str
    untracked_bytes: int
    protected_skipped: int
    filesystem_free_bytes: int
    victims: list[Victim] = field(default_factory=list)

    def result(self, dry_run: bool) -> PruneResult:
        pruned = sum(v.file.size for v in self.victims)
        return PruneResult(
            dry_run=dry_run,
            target_bytes=self.target_bytes,
            size_before=self.size_before,
            size_after=self.size_before - pruned,
            pruned_images=len(self.victims),
            pruned_bytes=pruned,
            images=[v.image_id for v in self.victims],
            max_size_bytes=self.max_size,
            trigger=self.trigger,
            stopped_by=self.stopped_by,
            untracked_bytes=self.untracked_bytes,
            hits_evicted=sum(v.row.hits for v in self.victims),
            idle_images=sum(1 for v in self.victims if v.idle),
            dead_images=sum(1 for v in self.victims if v.dead),
            protected_skipped=self.protected_skipped,
        )


@dataclass(frozen=True)
class DeadFirst:
    """Images Glance deleted: prune's first candidates, in LRU order."""

    ids: frozenset[str] = frozenset()
    rows: tuple[CachedRow, ...] = ()
    #: an image's file (None: gone), looked up only as candidates are consumed
    stat: Callable[[str], FileInfo | None] = lambda _image_id: None

    def then(
        self, lru: Iterator[tuple[CachedRow, FileInfo]]
    ) -> Iterator[tuple[CachedRow, FileInfo]]:
        """These images with a file, then ``lru`` without them."""
        found = ((row, self.stat(row.image_id)) for row in self.rows)
        first = ((row, info) for row, info in found if info is not None)
        rest = ((row, info) for row, info in lru if row.image_id not in self.ids)
        return itertools.chain(first, rest)


#: no image known to be deleted in Glance
NO_DEAD = DeadFirst()


def plan_prune(
    snapshot: PruneView,
    policy: PrunePolicy,
    now: float | None = None,
    *,
    newest_access: float | None = None,
    clock_steps: Sequence[ClockStep] = (),
    dead_first: Callable[[], DeadFirst] | None = None,
) -> PrunePlan:
    """Choose victims over a snapshot; touches nothing and always terminates.

    Candidates are tracked images (row and file) in ``(last_accessed,
    image_id)`` order, consumed lazily. Idle images are a prefix of that
    order, so one pass takes every idle image and then keeps going while the
    projected size is above the target. When untracked bytes alone exceed the
    target no image is evicted for size: evicting them all would not reach it.
    ``newest_access`` and ``clock_steps`` guard idle eviction against
    wall-clock steps (``idle.py``). ``dead_first`` looks up the images
    Glance deleted, taken before every other candidate; it is called only
    when the run can evict anything (a lookup over every row otherwise wasted).
    """
    moment = snapshot.taken_at if now is None else now
    size = snapshot.size_bytes
    untracked = snapshot.untracked_bytes()
    fs = snapshot.filesystem
    deficit = max(0, policy.required_free_bytes(fs.total_bytes) - fs.free_bytes)
    over_size = size > policy.max_size
    target = math.floor(policy.low_watermark * policy.max_size)
    if deficit:
        # free space alone: free what is missing; over size too: whichever is lower
        target = min(target, size - deficit) if over_size else size - deficit
    target = max(0, target)
    size_driven = (over_size or deficit > 0) and untracked <= target
    idle = idle_clock(policy.max_idle, moment, newest_access, clock_steps)

    victims: list[Victim] = []
    projected = size
    protected = 0
    limit = policy.max_images_per_run
    can_evict = size_driven or idle is not None
    dead = dead_first() if dead_first is not None and can_evict else NO_DEAD
    lru = snapshot.lru_candidates(size - target if size_driven else 0)
    for row, info in dead.then(lru):
        if row.image_id in policy.protected_images:
            protected += 1
            continue
        is_idle = idle is not None and idle.is_idle(row.last_accessed)
        if not (is_idle or (size_driven and projected > target)):
            if idle is not None and row.image_id in dead.ids:
                continue  # a dead image not idle: an idle one may follow it
            stopped_by = "target_reached"
            break
        if limit is not None and len(victims) >= limit:
            stopped_by = "max_images"
            break
        victims.append(Victim(row=row, file=info, idle=is_idle, dead=row.image_id in dead.ids))
        projected -= info.size
    else:
        stopped_by = "no_candidates" if size_driven and projected > target else "target_reached"

    trigger = "size" if over_size else "free_space" if deficit else None
    if trigger is None and victims:
        trigger = "idle"
    if trigger is None:
        stopped_by = "not_triggered"
    elif (over_size or deficit) and untracked > target:
        stopped_by = "untracked"

    return PrunePlan(
        size_before=size,
        target_bytes=target,
        max_size=policy.max_size,
        trigger=trigger,
        stopped_by=stopped_by,
        untracked_bytes=untracked,
        protected_skipped=protected,
        filesystem_free_bytes=fs.free_bytes,
        victims=victims,
    )


def dead_first_lookup(driver: CacheDriver) -> DeadFirst:
    """The images Glance deleted that still have a row here (none when the
    store cannot tell: sqlite, or no SELECT on Glance's ``images``)."""
    rows = dead_rows(driver.store)
    if not rows:
        return NO_DEAD
    return DeadFirst(frozenset(r.image_id for r in rows), tuple(rows), driver.stat_image)


def _evict_files(driver: CacheDriver, batch: list[Victim], result: PruneResult) -> list[Victim]:
    """Unlink the batch's files that are still exactly as planned.

    A victim whose file was replaced since planning (re-cached: Glance's
    commit keeps the old row, and its old ``last_accessed``) has its row
    touched, so the fresh copy is not the next run's first victim.
    """
    current = driver.store.rows_by_id(v.image_id for v in batch)
    evicted: list[Victim] = []
    recached: list[str] = []
    for victim in batch:
        row = current.get(victim.image_id)
        if row is None or not row.unchanged_since(victim.row):
            result.skipped_images.append(victim.image_id)  # read or deleted since planning
            continue
        try:
            st = os.lstat(victim.file.path)
        except FileNotFoundError:
            result.skipped_images.append(victim.image_id)
            continue
        if not victim.file.same_file(st):
            result.skipped_images.append(victim.image_id)  # re-cached since planning
            recached.append(victim.image_id)
            continue
        try:
            os.unlink(victim.file.path)
        except FileNotFoundError:
            result.skipped_images.append(victim.image_id)
            continue
        except OSError as exc:
            note_failure(result.errors, victim.file.path, exc)
            continue
        crash_point("prune:unlinked")  # test-only; off unless armed
        evicted.append(victim)
    if recached:
        driver.store.touch_rows(recached, time.time())
    return evicted


def execute_prune(
    driver: CacheDriver,
    plan: PrunePlan,
    policy: PrunePolicy,
    pause: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
) -> PruneResult:
    """Evict the plan's victims in batches; stop early on the time budget.

    ``stop`` is asked before each batch (a batch is never cut in half): when
    it answers True the run ends with ``stopped_by: stopped`` (shutdown).
    """
    result = plan.result(dry_run=False)
    result.pruned_images = result.pruned_bytes = 0
    result.images = []
    result.idle_images = result.hits_evicted = result.dead_images = 0
    try:
        _evict_batches(driver, plan, policy, result, pause, stop)
    except (DriverError, OSError) as exc:
        # what was evicted stays reported: the exception carries the result
        result.stopped_by, result.error = "error", str(exc)
        result.size_after = result.size_before - result.pruned_bytes
        fail_partway(exc, result)
        raise
    result.size_after = result.size_before - result.pruned_bytes
    if result.stopped_by == "target_reached" and result.size_after > result.target_bytes:
        result.stopped_by = "victims_changed"  # skipped or failed victims: next run continues
    return result


def _evict_batches(
    driver: CacheDriver,
    plan: PrunePlan,
    policy: PrunePolicy,
    result: PruneResult,
    pause: Callable[[float], None],
    stop: Callable[[], bool] | None,
) -> None:
    """The batch loop of ``execute_prune``; ``result`` counts an image as
    evicted once its file is gone (a row delete failing after that leaves a
    phantom row, which reconcile drops)."""
    deadline = None if policy.time_budget is None else time.monotonic() + policy.time_budget
    batch_size = max(1, policy.batch_size)
    if plan.victims:
        driver.store.check_writable()  # a database we cannot write: fail before unlinking anything
    for start in range(0, len(plan.victims), batch_size):
        if start and deadline is not None and time.monotonic() >= deadline:
            result.stopped_by = "time_budget"
            break
        if start and policy.batch_pause > 0:
            pause(policy.batch_pause)
        if stop is not None and stop():
            result.stopped_by = "stopped"
            break
        evicted = _evict_files(driver, plan.victims[start : start + batch_size], result)
        if not evicted:
            continue
        for victim in evicted:
            result.images.append(victim.image_id)
            result.pruned_bytes += victim.file.size
            result.idle_images += victim.idle
            result.dead_images += victim.dead
            result.hits_evicted += victim.row.hits
        result.pruned_images = len(result.images)
        fsync_directory(driver.base_dir)
        # a file re-cached since our unlink keeps its row (else: an orphan)
        driver.delete_rows([v.image_id for v in evicted], only_if_file_missing=True)


def _plan(
    driver: CacheDriver, policy: PrunePolicy, now: float | None, clock_steps: Sequence[ClockStep]
) -> PrunePlan:
    """Snapshot and plan; the newest read is looked up only when idle eviction is on."""
    snapshot = take_streaming_snapshot(driver, now)
    newest = None if policy.max_idle is None else driver.store.newest_access()
    return plan_prune(
        snapshot,
        policy,
        newest_access=newest,
        clock_steps=clock_steps,
        dead_first=lambda: dead_first_lookup(driver),
    )


def run_prune(
    driver: CacheDriver,
    policy: PrunePolicy,
    *,
    dry_run: bool = False,
    now: float | None = None,
    lock_timeout: float | None = 60.0,
    pause: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
    clock_steps: Sequence[ClockStep] = (),
) -> PruneResult:
    """Snapshot, plan and (unless ``dry_run``) evict under Glance's prune lock.

    ``clock_steps``: forward wall-clock steps the daemon observed, which idle
    ageing leaves out (``idle.py``).
    """
    if dry_run:
        return _plan(driver, policy, now, clock_steps).result(dry_run=True)
    with external_lock(driver.lock_dir, LOCK_NAME, timeout=lock_timeout):
        plan = _plan(driver, policy, now, clock_steps)
        return execute_prune(driver, plan, policy, pause, stop)
