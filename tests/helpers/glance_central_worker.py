"""A worker process for ``tests/integration/test_reliability_centralized.py``.

Run as ``python -m tests.helpers.glance_central_worker CONFIG_JSON`` (cwd: the
repository root). The same live "glance-api" as ``tests.helpers.glance_worker``
(same protocol on stdio, same seeded mix of writes, held writes, reads,
abandoned and crashed writes, same checks of the files), but driving Glance's
REAL ``centralized_db`` cache driver
(``glance.image_cache.drivers.centralized_db.Driver``, glance==33.0.0): the
files in the shared cache directory, the rows in Glance's main database
(``config["database"]``) under ``config["node_url"]``.

Every call the driver makes into Glance's database API (``insert_cache_details``,
``update_hit_count``, ``delete_cached_image``, ...) is timed and every
exception it raises is recorded, whatever the driver does with it after.

Two operations are added to the mix, so that Glance's known duplicate-insert
bug shows up and is attributed correctly:

* **re-cache**: write again an image this worker cached before and whose file
  is gone now (evicted, or removed below), as glance-api does when an evicted
  image is requested again. Just before, the worker asks Glance's own
  ``is_image_cached_for_node`` whether a row for it already exists.
* **external rm**: remove one of this worker's cached files directly, leaving
  its row: what an operator's ``rm`` or a lost disk does.

A re-cache over a row that existed *before the write started* hits Glance's
bug (its ``insert_cache_details`` swallows the duplicate and then raises
``PendingRollbackError`` at commit): the agent did not create that row (only
Glance and the ``external rm`` make stale rows), so such errors, and the ERROR
records logged during that write, are counted apart as ``glance_bug``. A
duplicate on a write that started with no row can only come from a row
inserted while Glance was writing, which only the agent (adopting the file)
could do: that, any deadlock, lock timeout or other database error is a
failure the test asserts to be absent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from tests.helpers.glance_worker import Worker, main

#: fragments of the exception text (SQLAlchemy/oslo.db, psycopg2, PyMySQL) of a lock failure
LOCK_MARKERS = ("deadlock", "lock wait timeout", "lock timeout", "could not obtain lock")
#: exception names of the duplicate insert (Glance's bug when the row was already there)
DUPLICATE_ERRORS = ("PendingRollbackError", "IntegrityError", "DBDuplicateEntry", "Duplicate")


class _TimedApi:
    """Glance's database API module, every call timed and its exceptions recorded."""

    def __init__(self, api: Any, worker: CentralWorker) -> None:
        self._api = api
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._api, name)
        if not callable(target):
            return target
        worker = self._worker

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            except BaseException as exc:
                worker._failure(exc, name)
                raise
            finally:
                worker.latencies.setdefault(worker._op, []).append(time.perf_counter() - started)

        return timed


class CentralWorker(Worker):
    """The sqlite worker's workload on Glance's centralized_db driver."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        #: ids of this worker's plain writes: the candidates for re-cache and external rm
        self.committed: list[str] = []
        #: True while a re-cache runs over a row that existed before it started
        self._over_stale_row = False
        self.glance_bug: list[str] = []
        self.glance_bug_logs: list[str] = []

    def setup(self) -> None:
        from tests.helpers.glance_harness import load_glance

        self.harness = load_glance()
        self._capture_glance_errors()
        import glance.common.config  # type: ignore[import-untyped]  # noqa: F401  (the URL option)
        from glance.image_cache.drivers import centralized_db  # type: ignore[import-untyped]
        from oslo_db import options as db_options  # type: ignore[import-untyped]

        self.harness.configure(
            self.cache_dir,
            max_size=self.config["glance_max_size"],
            stall_time=self.config["stall_time"],
            lock_path=self.config["lock_path"],
        )
        conf = self.harness.conf
        conf.set_override("image_cache_driver", "centralized_db")
        conf.set_override("worker_self_reference_url", self.config["node_url"])
        db_options.set_defaults(conf, connection=self.config["database"])  # [database]
        self.driver = centralized_db.Driver()
        self.driver.configure()  # the node is registered already: Duplicate, ignored
        self.api = self.driver.db_api
        self.driver.db_api = _TimedApi(self.api, self)

    # --------------------------------------------------------------- recording

    def _failure(self, exc: BaseException, where: str) -> None:
        if getattr(exc, "_recorded", False):  # seen at the API, now again at the op
            return
        with contextlib.suppress(AttributeError, TypeError):
            exc._recorded = True  # type: ignore[attr-defined]
        text = f"{self._op}/{where}: {type(exc).__name__}: {exc}"[:300]
        names = {cls.__name__ for cls in type(exc).__mro__}
        if self._over_stale_row and names & set(DUPLICATE_ERRORS):
            self.glance_bug.append(text)
        elif isinstance(exc, TimeoutError) or any(m in str(exc).lower() for m in LOCK_MARKERS):
            self.lock_failures.append(text)
        else:
            self.other_failures.append(text)

    # -------------------------------------------------------------- operations

    def _gone(self, image_id: str) -> bool:
        """True when no file of ``image_id`` is in the cache (any state)."""
        return not any(
            os.path.exists(self.driver.get_image_filepath(image_id, state))
            for state in ("active", "incomplete", "invalid")
        )

    def write(self, held: bool = False, image_id: str | None = None) -> None:
        if image_id is None and not held:
            image_id = self._new_id()
            self.committed.append(image_id)
        super().write(held=held, image_id=image_id)

    def recache(self) -> None:
        """Cache again an image whose file is gone; a stale row is Glance's bug."""
        candidates = [i for i in self.committed if self._gone(i)]
        if not candidates:
            self.write()
            return
        image_id = self.rng.choice(candidates)
        stale = self.api.is_image_cached_for_node(
            self.driver.context, self.config["node_url"], image_id
        )
        self._count("recache_over_stale_row" if stale else "recache")
        self._over_stale_row = bool(stale)
        logged = len(self.log.messages)
        try:
            super().write(image_id=image_id)
        finally:
            self._over_stale_row = False
        if stale:  # what Glance logged during this write belongs to its bug
            self.glance_bug_logs += self.log.messages[logged:]
            del self.log.messages[logged:]

    def external_rm(self) -> None:
        """Remove a cached file of ours behind Glance's back (its row stays)."""
        present = [i for i in self.committed if os.path.exists(self.driver.get_image_filepath(i))]
        if present:
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                os.unlink(self.driver.get_image_filepath(self.rng.choice(present)))
            self._count("external_rm")

    def random_op(self, r: float) -> None:
        if r < 0.08:
            self.recache()
        elif r < 0.10:
            self.external_rm()
        else:
            super().random_op((r - 0.10) / 0.90)

    def report(self) -> dict[str, Any]:
        return {
            **super().report(),
            "glance_bug": self.glance_bug,
            "glance_bug_logs": self.glance_bug_logs,
        }


if __name__ == "__main__":
    sys.exit(main(sys.argv, CentralWorker))
