"""Human renderings of the commands' results (what prints without ``--json``).

Each function takes the typed result the command produced -- never the JSON
document -- so a renamed field is a type error, not a ``KeyError`` at run time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

from ..config import age, iec
from ..maintenance import CleanResult, PruneResult, ReconcileResult
from ..maintenance.results import DeleteResult, Report

if TYPE_CHECKING:
    from ..exporter.cache_state import CacheState, StoreInfo

__all__ = [
    "CachedEntry",
    "render_cached",
    "render_delete",
    "render_delete_all",
    "render_result",
    "render_status",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns aligned by width; column indexes in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


class CachedEntry(TypedDict):
    """One ``list-cached`` entry (its JSON keys, DESIGN section 4)."""

    image_id: str
    size: int
    hits: int
    last_accessed: float
    last_modified: float


def _clean_lines(r: CleanResult) -> list[str]:
    lines = [
        f"{'Would remove' if r.dry_run else 'Removed'} {r.invalid_removed} invalid"
        f" and {r.stalled_removed} stalled files ({iec(r.bytes_freed)})",
        *(f"  {path}" for path in r.files),
    ]
    if r.skipped_active:
        lines.append(f"kept {r.skipped_active} incomplete files still being written")
    if r.skipped_future:
        lines.append(f"kept {r.skipped_future} files with an mtime in the future")
    return lines


def _prune_lines(r: PruneResult) -> list[str]:
    lines = [
        f"{'Would evict' if r.dry_run else 'Evicted'} {r.pruned_images} images"
        f" ({iec(r.pruned_bytes)}): {iec(r.size_before)} -> {iec(r.size_after)},"
        f" target {iec(r.target_bytes)}, stopped: {r.stopped_by}",
        *(f"  {image_id}" for image_id in r.images),
    ]
    if r.stopped_by == "untracked":
        lines.append(
            f"untracked files hold {iec(r.untracked_bytes)}, more than the target:"
            " run 'reconcile' to adopt or remove them"
        )
    return lines


#: how a reconcile report names what it does with orphans, by policy
_ORPHAN_ACTIONS = {"adopt": "adopt", "delete": "remove", "report": "report"}


def _reconcile_lines(r: ReconcileResult) -> list[str]:
    verb = "would " if r.dry_run else ""
    lines = [
        f"orphans: {verb}adopt {r.orphans_adopted}, {verb}remove {r.orphans_removed},"
        f" report {r.orphans_reported}, within grace {r.orphans_in_grace}",
        f"phantom rows: {verb}remove {r.phantoms_removed}",
        f"sizes: {verb}fix {r.sizes_fixed}",
        f"queue entries of cached images: {verb}remove {r.queue_entries_removed}",
    ]
    action = _ORPHAN_ACTIONS[r.orphan_policy]
    lines += [f"  orphan {image_id}: {verb}{action}" for image_id in r.orphans]
    lines += [f"  phantom row {image_id}: {verb}remove" for image_id in r.phantoms]
    if r.invalid_rows_removed:
        lines.append(f"rows with non-UUID ids: {verb}remove {r.invalid_rows_removed}")
    lines += [
        f"  row with non-UUID id {image_id or 'NULL'}: {verb}remove" for image_id in r.invalid_rows
    ]
    return lines


def render_result(result: Report) -> str:
    """A clean, prune or reconcile result, then one line per failed file operation."""
    match result:
        case CleanResult():
            lines, errors = _clean_lines(result), result.errors
        case PruneResult():
            lines, errors = _prune_lines(result), result.errors
        case ReconcileResult():
            lines, errors = _reconcile_lines(result), result.errors
        case _:
            raise TypeError(f"not a maintenance result: {type(result).__name__}")
    return "\n".join([*lines, *(f"error: {e}" for e in errors)])


def _failure_lines(r: DeleteResult) -> list[str]:
    """The lines of a delete result's failure fields."""
    return [f"failed {i}: {reason}" for i, reason in r.failed.items()] + [
        f"not attempted {i}" for i in r.not_attempted
    ]


def render_delete(r: DeleteResult, state: str) -> str:
    """``delete-cached`` / ``delete-queued``: every id's fate."""
    lines = [f"deleted {i}" for i in r.deleted]
    lines += [f"not {state}: {i}" for i in r.not_found]
    return "\n".join(lines + _failure_lines(r))


def render_delete_all(r: DeleteResult) -> str:
    """``delete-all-cached``: a count, then what failed."""
    return "\n".join([f"deleted {len(r.deleted)} cached images", *_failure_lines(r)])


def _foreign_summary(state: CacheState) -> str:
    """``N (name, name, ...)``: files that are not images, which nothing touches."""
    names = list(state.foreign_names)
    if not names:
        return str(state.foreign_files)
    more = state.foreign_files - len(names)
    listed = ", ".join(names) + (f", and {more} more" if more else "")
    return f"{state.foreign_files} ({listed}; never touched)"


def render_status(state: CacheState, cache_dir: str, store: StoreInfo) -> str:
    """``status``: one aligned line per figure."""
    rows = [
        ("cache", cache_dir),
        *[(key.replace("_", " "), value) for key, value in store.as_dict().items()],
        ("size", f"{iec(state.size_bytes)} of {iec(state.max_size_bytes)}"),
        ("cached images", str(state.cached_images)),
        ("queued images", str(state.queued_images)),
        ("incomplete files", str(state.incomplete_images)),
        ("invalid files", str(state.invalid_images)),
        ("orphan files", f"{state.orphan_files} ({iec(state.untracked_bytes)} untracked)"),
        ("phantom rows", str(state.phantom_rows)),
        ("foreign files", _foreign_summary(state)),
        ("filesystem free", iec(state.filesystem_free_bytes)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def render_cached(entries: Sequence[CachedEntry], now: float | None = None) -> str:
    """``list-cached``: a table of the cached images, ages relative to ``now``."""
    if not entries:
        return "no cached images"
    now = time.time() if now is None else now
    rows = [
        [
            e["image_id"],
            iec(e["size"]),
            str(e["hits"]),
            age(now - e["last_accessed"]) + " ago",
            age(now - e["last_modified"]) + " ago",
        ]
        for e in entries
    ]
    head = ["IMAGE ID", "SIZE", "HITS", "LAST ACCESSED", "CACHED"]
    return table(head, rows, right=(1, 2))
