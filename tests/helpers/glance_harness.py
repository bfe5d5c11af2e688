"""Drive OpenStack Glance's *real* sqlite image-cache driver from tests.

Used by ``tests/test_interop.py`` only. Nothing here imports Glance at module
import time: ``load_glance()`` does, once, so that a machine without the
``interop`` extra can still collect the test suite.

Glance is configured the way glance-api is: through options on oslo.config's
global ``cfg.CONF``. Options are registered at import; per-test values go in
with ``set_override`` and come out again with ``clear_override``
(``GlanceHarness.unconfigure``), so no value leaks from one test into the next.

Gotchas handled here (see the research notes on driving Glance from tests):

* importing Glance emits ``DeprecationWarning``s (webob's ``cgi``,
  oslo_utils) and eventlet's ``EventletDeprecationWarning``: ignored around
  the import only;
* importing ``glance.image_cache`` adds a ``StreamHandler(stderr)`` to the
  root logger, and every ``Driver.configure()`` logs a multi-line deprecation
  warning: the handler is removed again and the ``glance`` logger silenced
  (both restored by ``GlanceHarness.close``);
* ``image_cache_driver`` defaults to ``centralized_db``: ``ImageCache()``
  must be told ``sqlite``;
* unless ``[oslo_concurrency] lock_path`` is set, ``initialize_db`` makes the
  cache directory the lock path and leaves the lock file
  ``image_cache_db_init`` in it (``lock_path=None`` here asks for exactly
  that Glance default);
* ``configure()`` runs ``executescript`` with zero lock tolerance, so a
  concurrent writer makes it fail with ``database is locked``
  (``BadDriverConfiguration``): retried a few times.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

#: Options ``configure`` overrides, as ``(name, group)``.
_OVERRIDDEN = (
    ("image_cache_dir", None),
    ("image_cache_driver", None),
    ("image_cache_sqlite_db", None),
    ("image_cache_max_size", None),
    ("image_cache_stall_time", None),
    ("lock_path", "oslo_concurrency"),
)

#: Glance's ``image_cache_max_size`` default (10 GiB).
GLANCE_DEFAULT_MAX_SIZE = 10 * 1024**3

#: Attempts at ``Driver.configure()`` before giving up on "database is locked".
CONFIGURE_ATTEMPTS = 5


@dataclass
class GlanceHarness:
    """Glance's modules plus the process state we changed to import them."""

    conf: Any
    sqlite: ModuleType
    image_cache_module: ModuleType
    exception: ModuleType
    #: handlers Glance's import added to the root logger (removed again)
    root_handlers_removed: list[logging.Handler] = field(default_factory=list)
    _glance_logger_level: int = logging.NOTSET

    # ------------------------------------------------------------ configuration

    def configure(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        max_size: int = GLANCE_DEFAULT_MAX_SIZE,
        stall_time: float = 86400,
        lock_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Point Glance's global CONF at ``cache_dir`` (no config file is read).

        ``lock_path=None`` leaves ``[oslo_concurrency] lock_path`` unset, so
        Glance's default applies: the cache directory itself.
        """
        conf = self.conf
        conf.set_override("image_cache_dir", os.fspath(cache_dir))
        conf.set_override("image_cache_driver", "sqlite")
        conf.set_override("image_cache_sqlite_db", "cache.db")
        conf.set_override("image_cache_max_size", max_size)
        conf.set_override("image_cache_stall_time", int(stall_time))
        if lock_path is None:
            conf.clear_override("lock_path", group="oslo_concurrency")
        else:
            os.makedirs(lock_path, exist_ok=True)
            conf.set_override("lock_path", os.fspath(lock_path), group="oslo_concurrency")

    def unconfigure(self) -> None:
        """Clear every override ``configure`` may have set."""
        for name, group in _OVERRIDDEN:
            self.conf.clear_override(name, group=group)

    # ------------------------------------------------------------------ drivers

    def driver(self, cache_dir: str | os.PathLike[str], **options: Any) -> Any:
        """A configured ``glance.image_cache.drivers.sqlite.Driver`` on ``cache_dir``.

        The driver keeps its paths after CONF moves on, so two caches can be
        driven one after the other; calls that read CONF at call time
        (``clean()`` without ``stall_time``, ``ImageCache.prune``) need
        ``configure`` pointed at their cache again.
        """
        self.configure(cache_dir, **options)
        driver = self.sqlite.Driver()
        for attempt in range(CONFIGURE_ATTEMPTS):
            try:
                driver.configure()
                break
            except self.exception.BadDriverConfiguration:
                if attempt == CONFIGURE_ATTEMPTS - 1:
                    raise
        return driver

    def image_cache(self, cache_dir: str | os.PathLike[str], **options: Any) -> Any:
        """Glance's ``ImageCache()`` (what the pruner and the API use) on ``cache_dir``."""
        self.configure(cache_dir, **options)
        cache = self.image_cache_module.ImageCache()
        assert type(cache.driver) is self.sqlite.Driver, type(cache.driver)
        return cache

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Undo what ``load_glance`` changed in the process (logging, CONF)."""
        self.unconfigure()
        logging.getLogger("glance").setLevel(self._glance_logger_level)


def load_glance() -> GlanceHarness:
    """Import Glance's cache modules; raise ImportError when Glance is absent."""
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    with warnings.catch_warnings():
        # eventlet (via futurist/oslo.messaging): EventletDeprecationWarning;
        # webob: 'cgi' DeprecationWarning; oslo_utils.eventletutils too.
        warnings.simplefilter("ignore")
        import glance.common.exception as glance_exception
        import glance.image_cache as glance_image_cache
        from glance.image_cache.drivers import sqlite as glance_sqlite
        from oslo_config import cfg
    added = [h for h in root.handlers if h not in handlers_before]
    for handler in added:
        root.removeHandler(handler)
    glance_logger = logging.getLogger("glance")
    harness = GlanceHarness(
        conf=cfg.CONF,
        sqlite=glance_sqlite,
        image_cache_module=glance_image_cache,
        exception=glance_exception,
        root_handlers_removed=added,
        _glance_logger_level=glance_logger.level,
    )
    # Every configure() logs the sqlite driver's deprecation text; a rollback
    # logs a warning; get_db logs swallowed errors at ERROR. Tests assert on
    # behaviour, not on Glance's log lines.
    glance_logger.setLevel(logging.CRITICAL + 1)
    return harness


__all__ = ["GLANCE_DEFAULT_MAX_SIZE", "GlanceHarness", "load_glance"]
