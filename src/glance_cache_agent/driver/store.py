"""The metadata store: where a cache's rows live, behind one typed interface.

Glance keeps one row per cached image either in ``cache.db`` next to the
files (the ``sqlite`` driver) or in its main SQL database, scoped per node
(``centralized_db``). The files follow the same layout either way; only the
rows move. Everything above the driver (maintenance, the exporter, the CLI)
reaches rows through ``MetadataStore`` and so works over either store.

At this interface a row is keyed by its image id and its timestamps are
float epoch seconds (what ``time.time()`` returns), whatever the store keeps
underneath (SQLite's REAL, a naive UTC ``DATETIME`` on a server). Every write
runs in short transactions of a bounded batch of rows, because Glance's own
writers wait on the same locks with a small budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class CachedRow:
    """One image's row: its id, epoch timestamps, recorded size and hits."""

    image_id: str
    last_accessed: float
    last_modified: float
    size: int
    hits: int

    def as_glance_dict(self) -> dict[str, Any]:
        """The dict shape Glance's ``get_cached_images`` returns."""
        return {
            "image_id": self.image_id,
            "hits": self.hits,
            "last_accessed": self.last_accessed,
            "last_modified": self.last_modified,
            "size": self.size,
        }

    def unchanged_since(self, planned: CachedRow) -> bool:
        """Whether nobody read the image since ``planned`` was seen: the
        check prune makes before evicting a victim it planned earlier.

        ``hits`` is compared too: a server's DATETIME may keep whole seconds
        only (MySQL/MariaDB), so a read within the same second leaves
        ``last_accessed`` as it was but not ``hits``."""
        return self.last_accessed == planned.last_accessed and self.hits == planned.hits


class MetadataStore(Protocol):
    """The rows of one cache (this node's rows, for a shared database).

    Errors leave as the driver's ``DatabaseError`` subclasses. A row whose
    id is NULL reads with ``image_id == ""``; a row with a value that is not
    a number raises ``BadRowValue`` when it is read as a ``CachedRow``.
    """

    # ---------------------------------------------------------------- checks

    def check_schema(self) -> None:
        """Raise unless the store can be reached and has Glance's schema
        (``DatabaseMissing``, ``SchemaMismatch``: one error naming what lacks)."""
        ...

    def check_writable(self) -> None:
        """Raise ``DatabaseReadOnly`` (or ``DatabaseLocked``) unless a write
        would succeed now; called before deleting files whose rows must go too."""
        ...

    # ----------------------------------------------------------------- reads

    def list_rows(self) -> list[CachedRow]:
        """Every row, unordered, read in short statements."""
        ...

    def rows_by_id(self, image_ids: Iterable[str]) -> dict[str, CachedRow]:
        """Current rows of the given ids; absent ids are missing from the result."""
        ...

    def iter_rows_lru(
        self, page_size: int = 1000, max_page_size: int = 16000
    ) -> Iterator[CachedRow]:
        """Rows in eviction order, ``(last_accessed, image_id)`` (ties broken
        by id), a page at a time: memory stays at one page and no lock is
        held while the caller works through it."""
        ...

    def iter_row_ids(self) -> Iterator[str]:
        """The id of every row (NULL ids left out), in pages; no other
        column is read, so a row with a mistyped value is still listed."""
        ...

    def total_hits(self) -> int:
        """Sum of ``hits`` over all rows."""
        ...

    def newest_access(self) -> float | None:
        """The latest ``last_accessed`` of any row (None: no rows): the most
        recent moment the cache is known to have been used."""
        ...

    # ---------------------------------------------------------------- writes

    def record_cached(self, image_id: str, size: int, when: float) -> None:
        """Record a file just committed into the cache: a new row (hits 0), or
        an existing row's timestamps and size refreshed (its hits kept)."""
        ...

    def record_hit(self, image_id: str, when: float) -> None:
        """Count one read of ``image_id`` and stamp its ``last_accessed``."""
        ...

    def adopt(self, rows: Sequence[CachedRow]) -> int:
        """Insert rows for files that have none; a row that exists by now
        (Glance inserted it meanwhile) wins. Return rows inserted."""
        ...

    def delete_rows(
        self, image_ids: Sequence[str], keep: Callable[[str], bool] | None = None
    ) -> int:
        """Delete the rows of ``image_ids`` in short batches; return rows deleted.

        ``keep(image_id)`` is asked inside each batch's write transaction,
        just before its delete: a row it answers True for stays (the caller's
        last look, e.g. "its file came back").
        """
        ...

    def delete_invalid_rows(self, image_ids: Sequence[str]) -> int:
        """Delete rows whose id is not a UUID (``""`` stands for a NULL id);
        UUIDs passed in are ignored. Return rows deleted."""
        ...

    def delete_all_rows(self) -> None:
        """Delete every row."""
        ...

    def touch_rows(self, image_ids: Sequence[str], when: float) -> int:
        """Move ``last_accessed`` of the given rows forward to ``when`` (never
        back); return rows changed."""
        ...

    def set_sizes(self, sizes: Sequence[tuple[str, int]]) -> int:
        """Set ``size`` of the given rows ``(image_id, size)``; return rows changed."""
        ...


@runtime_checkable
class DeadImageLookup(Protocol):
    """An optional store capability: telling which images Glance itself deleted.

    Only a store beside Glance's ``images`` table has it (``centralized_db``
    with SELECT on ``images``). Such images can never be served again, so
    prune evicts them first and the exporter counts them; maintenance asks
    through ``dead_rows`` below and so stays store-agnostic.
    """

    def dead_rows(self) -> list[CachedRow] | None:
        """The rows of images Glance deleted, in eviction order ``(last_accessed,
        image_id)``; None: cannot tell."""
        ...


def dead_rows(store: object) -> list[CachedRow] | None:
    """``store``'s rows of images Glance deleted; None when the store cannot tell."""
    if isinstance(store, DeadImageLookup):
        return store.dead_rows()
    return None


__all__ = ["CachedRow", "DeadImageLookup", "MetadataStore", "dead_rows"]
