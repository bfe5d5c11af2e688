"""Maintenance: clean, prune and reconcile, each planned over a snapshot of the
driver's state and then executed, so that every operation has an exact dry run.

Data flows one way: callers (CLI, scheduler) -> maintenance -> driver.
"""

from .clean import CleanPlan, CleanPolicy, execute_clean, plan_clean, run_clean
from .prune import PrunePlan, PrunePolicy, Victim, execute_prune, plan_prune, run_prune
from .reconcile import (
    OrphanPolicy,
    ReconcilePlan,
    ReconcilePolicy,
    execute_reconcile,
    plan_reconcile,
    run_reconcile,
)
from .results import CleanResult, PruneResult, ReconcileResult
from .snapshot import (
    CacheSnapshot,
    FilesystemUsage,
    PruneView,
    StreamingSnapshot,
    take_snapshot,
    take_streaming_snapshot,
)

__all__ = [
    "CacheSnapshot",
    "CleanPlan",
    "CleanPolicy",
    "CleanResult",
    "FilesystemUsage",
    "OrphanPolicy",
    "PrunePlan",
    "PrunePolicy",
    "PruneResult",
    "PruneView",
    "ReconcilePlan",
    "ReconcilePolicy",
    "ReconcileResult",
    "StreamingSnapshot",
    "Victim",
    "execute_clean",
    "execute_prune",
    "execute_reconcile",
    "plan_clean",
    "plan_prune",
    "plan_reconcile",
    "run_clean",
    "run_prune",
    "run_reconcile",
    "take_snapshot",
    "take_streaming_snapshot",
]
