"""Sessions in Glance's main database that behave next to a live glance-api.

Glance's own cache calls are short transactions with no retry, waiting on
row locks for as long as the server lets them (PostgreSQL: forever by
default; InnoDB: 50 s). The rules enforced here, for every statement the
centralized store runs:

* every session sets a lock-wait timeout of about 2 s on connect (an engine
  event), so the agent gives up on a lock long before Glance would;
* each unit of work is one short transaction on its own pooled connection;
  deadlocks, serialization failures and lock-wait timeouts (Galera's
  certification conflicts arrive as deadlocks) re-run the whole unit a
  bounded number of times, then raise ``DatabaseLocked``;
* every DB-API error leaves as a typed ``DatabaseError`` whose ``path`` is
  the URL with its password hidden, and whose message never holds the
  password: ``DatabaseUnavailable`` (server down, login refused),
  ``DatabaseReadOnly`` (no write privilege, a read-only server or file),
  ``DatabaseLocked``.

SQLite (tests only) gets what its driver lacks for this: a busy timeout,
real savepoints, and ``BEGIN IMMEDIATE`` for write transactions so a read
never has to be upgraded to a write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, Engine, event
from sqlalchemy.exc import DBAPIError

from .db import TxnObserver
from .errors import DatabaseError, DatabaseLocked, DatabaseReadOnly, DatabaseUnavailable

_T = TypeVar("_T")

#: How long a session waits for a row lock before giving up (Glance retries nothing).
DEFAULT_LOCK_TIMEOUT = 2.0
#: Runs of one unit of work before a lock conflict is raised as DatabaseLocked.
ATTEMPTS = 3
#: Pause before the second run; doubled before each later one.
BACKOFF = 0.05

#: PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock,
#: lock_timeout expired (lock_not_available)
_PG_RETRY = frozenset({"40001", "40P01", "55P03"})
#: PostgreSQL SQLSTATEs of a refused write: insufficient privilege, read-only transaction
_PG_READ_ONLY = frozenset({"42501", "25006"})
#: MySQL/MariaDB errors worth a retry: lock wait timeout, deadlock (also Galera's conflicts)
_MYSQL_RETRY = frozenset({1205, 1213})
#: MySQL/MariaDB errors of a refused write: table/column access denied, --read-only,
#: read-only transaction
_MYSQL_READ_ONLY = frozenset({1142, 1143, 1290, 1792})

_WRITE = "glance_cache_agent_write"

#: query parameters DB-API drivers accept as the password
_PASSWORD_PARAMS = frozenset({"password", "passwd"})


def safe_url(url: URL) -> str:
    """``url`` for messages: its password hidden, also one given as a query parameter."""
    mark = "GCAHIDDENPASSWORD"  # rendered as is, then shown as *** (unescaped)
    query = {k: (mark if k.lower() in _PASSWORD_PARAMS else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True).replace(mark, "***")


def url_secrets(url: URL) -> list[str]:
    """Every password ``url`` carries, to blot out of a driver's messages."""
    found = [url.password] if url.password else []
    for key, value in url.query.items():
        if key.lower() in _PASSWORD_PARAMS:
            found += [value] if isinstance(value, str) else list(value)
    return [str(secret) for secret in found if secret]


def configure_sessions(engine: Engine, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Make every new connection of ``engine`` wait at most ``lock_timeout`` for a lock."""
    backend = engine.dialect.name

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        if backend == "postgresql":
            # autocommit: a SET inside the pool's first transaction would be rolled back
            dbapi_conn.autocommit = True
            _run(dbapi_conn, f"SET lock_timeout = {max(1, round(lock_timeout * 1000))}")
            dbapi_conn.autocommit = False
        elif backend in ("mysql", "mariadb"):
            _run(
                dbapi_conn, f"SET SESSION innodb_lock_wait_timeout = {max(1, round(lock_timeout))}"
            )
        elif backend == "sqlite":
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (savepoints work)
            _run(dbapi_conn, f"PRAGMA busy_timeout = {max(0, round(lock_timeout * 1000))}")

    if backend == "sqlite":

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            writing = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def _run(dbapi_conn: Any, sql: str) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


class ServerDatabase:
    """Runs units of work against Glance's database, one short transaction each.

    A unit of work is a function of a ``Connection``; it may run more than
    once (a retry after a deadlock), so it must not have effects outside
    the transaction that matter twice.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        pause: Callable[[float], None] = time.sleep,
        observer: TxnObserver | None = None,
    ) -> None:
        self.engine = engine
        self.label = safe_url(engine.url)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.pause = pause
        self.observer = observer

    @property
    def backend(self) -> str:
        """``postgresql``, ``mysql`` (MariaDB too) or ``sqlite``."""
        return self.engine.dialect.name

    def read(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in a read transaction (rolled back at the end)."""
        return self._retrying(lambda: self._once(work, write=False, commit=False))

    def write(self, work: Callable[[Connection], _T], commit: bool = True) -> _T:
        """Run ``work`` in one write transaction; ``commit=False`` rolls a
        body that succeeded back (a probe, see ``check_writable``)."""
        return self._retrying(lambda: self._once(work, write=True, commit=commit))

    def _once(self, work: Callable[[Connection], _T], write: bool, commit: bool) -> _T:
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise DatabaseUnavailable(
                self.label, f"cannot connect to the database: {self._message(exc)}"
            ) from exc
        with conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            started = time.perf_counter()
            try:
                with conn.begin() as transaction:
                    result = work(conn)
                    if not commit:
                        transaction.rollback()
                return result
            finally:
                if write and self.observer is not None:
                    self.observer(time.perf_counter() - started)

    def _retrying(self, run: Callable[[], _T]) -> _T:
        """``run()``, re-run after a lock conflict; DB-API errors leave typed."""
        for attempt in range(self.attempts):
            try:
                return run()
            except DBAPIError as exc:
                if not self._retryable(exc):
                    raise self.translate(exc) from exc
                if attempt + 1 == self.attempts:
                    raise DatabaseLocked(
                        self.label,
                        f"lock conflict persisted over {self.attempts} attempts:"
                        f" {self._message(exc)}",
                    ) from exc
                self.pause(self.backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retryable(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        if self.backend == "postgresql":
            return getattr(orig, "pgcode", None) in _PG_RETRY
        if self.backend in ("mysql", "mariadb"):
            return _mysql_errno(orig) in _MYSQL_RETRY
        return "locked" in str(orig).lower() or "busy" in str(orig).lower()

    def translate(self, exc: DBAPIError) -> DatabaseError:
        """The typed error that explains a DB-API error."""
        message = self._message(exc)
        if exc.connection_invalidated:
            return DatabaseUnavailable(self.label, f"lost the database connection: {message}")
        if self._read_only(exc):
            return DatabaseReadOnly(self.label, f"cannot write cached_images: {message}")
        return DatabaseError(self.label, message)

    def _read_only(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        if self.backend == "postgresql":
            return getattr(orig, "pgcode", None) in _PG_READ_ONLY
        if self.backend in ("mysql", "mariadb"):
            return _mysql_errno(orig) in _MYSQL_READ_ONLY
        return "readonly" in str(orig).lower()

    def _message(self, exc: DBAPIError) -> str:
        """The driver's own message, one line, with the password blotted out."""
        text = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
        for secret in url_secrets(self.engine.url):
            text = text.replace(secret, "***")
        return text


def _mysql_errno(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


__all__ = [
    "ATTEMPTS",
    "BACKOFF",
    "DEFAULT_LOCK_TIMEOUT",
    "ServerDatabase",
    "configure_sessions",
    "safe_url",
    "url_secrets",
]
