"""Real PostgreSQL and MariaDB servers, with Glance's own schema, for the centralized_db tests.

Each server runs as a plain child process (as the OS user ``postgres`` /
``mysql``, as Debian runs them) in a private temporary directory, listening on
127.0.0.1 on a free port and on a unix socket in that directory, with fsync
off: they are throwaway. They start once per test session, on first use, and
are stopped at session end (killed if they do not stop, at once if start-up
fails, and by the kernel if the session itself is killed: ``PR_SET_PDEATHSIG``).
Both servers say when they are ready through the systemd notify protocol, so
start-up waits for that message, not for a port to answer.

Glance's schema comes from Glance's own ``glance-manage db sync`` (the
``interop`` extra), run once per server into a template database; every test
gets a fresh clone (PostgreSQL: ``CREATE DATABASE ... TEMPLATE``; MariaDB: the
template's ``SHOW CREATE TABLE`` statements replayed, so foreign keys survive,
which ``CREATE TABLE ... LIKE`` would drop) and the clone is dropped after it.

Without a server binary (or without Glance) the tests skip, except under
``CI``, where ``.ci/run`` installs them and a missing one fails.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import URL, Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.helpers import tools
from tests.helpers.glance_schema import create_glance_schema

#: The application account tests connect as (over TCP, with a password, as Glance does).
DB_USER = "glance"
#: Its password: distinctive, so tests can assert it never shows up in output.
DB_PASSWORD = "s3cret-Glance-pw"
#: The database Glance's ``db sync`` fills once per server; tests get clones of it.
TEMPLATE_DB = "glance_template"

#: How long a server may take to start or stop before it is killed (a limit, not a pace).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Start attempts: a free port can be taken by another process before the server binds it.
START_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def unavailable(reason: str) -> NoReturn:
    """Skip a test that needs a database server; in CI, where one must exist, fail it."""
    tools.unavailable(reason, "the database server tests")


def find_binary(name: str, extra_dirs: list[str]) -> str | None:
    """``name`` on PATH, else in ``extra_dirs`` (first hit wins), else None."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs])
    return shutil.which(name, path=search)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def signal_pid(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a bounded wait for a process we stopped)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class DbServer:
    """A throwaway database server owned by this test session.

    Subclasses know how to initialise, start and stop their server and how to
    clone the template database; this class holds what both share: the
    directory, the port, the accounts, Glance's ``db sync`` and the per-test
    databases.
    """

    kind: str  # the SQLAlchemy backend name: "postgresql" or "mysql"
    drivername: str  # the URL scheme tests use, with its DB-API driver
    os_user: str
    stop_signal: signal.Signals  # the server's "shut down now, closing sessions"

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._template_ready = False
        self._admin: Engine | None = None
        #: Seconds Glance's db sync took (None until it ran): reported by the tests.
        self.db_sync_seconds: float | None = None

    # -- life cycle ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's pid (``setpriv`` execs it), once spawned."""
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Initialise the data directory and start the server; stop it again on failure."""
        try:
            self._initdb()
            self._spawn()
            self._create_app_user()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (killing it if it will not stop) and remove its directory."""
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None
        if self.process is not None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self) -> None:
        """Start the server as our child and wait for its READY=1 on a notify socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify_path = self.root / "notify.sock"
            notify.bind(str(notify_path))
            _chown(notify_path, self.os_user)
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [*as_user(self.os_user, die_with_parent=True), *self._server_argv()],
                    cwd=self.root,
                    env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            self._wait_ready(notify)

    def _wait_ready(self, notify: socket.socket) -> None:
        """Block until the server says READY=1 (or exits, or START_TIMEOUT passes)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([notify], [], [], 0.5)
            if readable and b"READY=1" in notify.recv(4096):
                return
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.kind} server exited with {self.process.returncode}:\n"
                    f"{_log_tail(self.log)}"
                )
        raise ServerStartError(f"{self.kind} server not ready in {START_TIMEOUT} s")

    def _initdb(self) -> None:
        raise NotImplementedError

    def _server_argv(self) -> list[str]:
        """The server's command line (run as ``os_user``)."""
        raise NotImplementedError

    def _create_app_user(self) -> None:
        raise NotImplementedError

    def run_as_owner(self, argv: list[str]) -> None:
        """Run ``argv`` as the server's OS user (root may not run these servers)."""
        subprocess.run(
            [*as_user(self.os_user), *argv], cwd=self.root, check=True, capture_output=True
        )

    # -- URLs and engines ---------------------------------------------------------------

    def url(self, database: str, password: str = DB_PASSWORD) -> str:
        """The URL tests (and Glance) use: the app user over TCP on loopback."""
        return URL.create(
            self.drivername,
            username=DB_USER,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def admin_url(self) -> URL:
        """The superuser over the unix socket."""
        raise NotImplementedError

    def admin(self) -> Engine:
        """A superuser engine in autocommit mode (for CREATE/DROP DATABASE)."""
        if self._admin is None:
            self._admin = create_engine(self.admin_url(), isolation_level="AUTOCOMMIT")
        return self._admin

    # -- Glance's schema and per-test databases ---------------------------------------------

    def ensure_template(self) -> None:
        """Build the template database with Glance's own ``db sync`` (once per server)."""
        if self._template_ready:
            return
        with self.admin().connect() as conn:
            self._create_database(conn, TEMPLATE_DB)
        self.db_sync_seconds = run_glance_db_sync(self.url(TEMPLATE_DB), self.root)
        self._seal_template()
        self._template_ready = True

    def clone_template(self, name: str) -> str:
        """Create database ``name`` with Glance's schema (a copy of the template); its URL."""
        self.ensure_template()
        with self.admin().connect() as conn:
            self._clone(conn, name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session a test left open on it."""
        with self.admin().connect() as conn:
            self._drop(conn, name)

    def _create_database(self, conn: Connection, name: str) -> None:
        raise NotImplementedError

    def _seal_template(self) -> None:
        """Make the template ready to be copied (nobody connected, metadata captured)."""

    def _clone(self, conn: Connection, name: str) -> None:
        raise NotImplementedError

    def _drop(self, conn: Connection, name: str) -> None:
        raise NotImplementedError


def as_user(name: str, die_with_parent: bool = False) -> list[str]:
    """The command prefix running a program as OS user ``name`` (only root can switch).

    ``die_with_parent``: the program gets SIGKILL when this process dies, so a
    killed test session cannot leave the server behind.
    """
    options = [f"--reuid={name}", f"--regid={name}", "--init-groups"] if os.geteuid() == 0 else []
    if die_with_parent:
        options.append("--pdeathsig=KILL")
    return ["setpriv", *options, "--"] if options else []


def _chown(path: Path, owner: str) -> None:
    """Give ``path`` to OS user ``owner`` (when root: otherwise we are the owner)."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _owned_tempdir(prefix: str, owner: str) -> Path:
    """A short private temp dir (unix socket paths are limited) owned by ``owner``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    _chown(root, owner)
    return root


def run_glance_db_sync(url: str, workdir: Path) -> float:
    """Run Glance's ``glance-manage db sync`` against ``url``; the seconds it took."""
    conf = workdir / "glance-db-sync.conf"
    conf.write_text(f"[DEFAULT]\n\n[database]\nconnection = {url}\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "glance.cmd.manage", "--config-file", str(conf), "db", "sync"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"glance-manage db sync failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


# -- PostgreSQL -----------------------------------------------------------------------------

PG_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


class PostgresServer(DbServer):
    """PostgreSQL: ``initdb``, then ``postgres`` itself (scram over TCP, trust on the socket).

    The postmaster runs in the foreground as our child (not daemonized by
    ``pg_ctl``), so it can die with the session; SIGINT is its fast shutdown.
    """

    kind = "postgresql"
    drivername = "postgresql+psycopg2"
    os_user = "postgres"
    stop_signal = signal.SIGINT

    def __init__(self, root: Path, port: int, bindir: str) -> None:
        super().__init__(root, port)
        self.bindir = bindir

    @classmethod
    def binaries(cls) -> str | None:
        """The directory holding initdb and postgres, or None."""
        initdb = find_binary("initdb", PG_DIRS)
        if initdb is None:
            return None
        bindir = os.path.dirname(os.path.realpath(initdb))
        return bindir if os.access(f"{bindir}/postgres", os.X_OK) else None

    def _initdb(self) -> None:
        pwfile = self.root / "superuser-password"
        pwfile.write_text("postgres-superuser\n")
        self.run_as_owner(
            [
                f"{self.bindir}/initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def _server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [f"--{name}={value}" for name, value in settings.items()]
        return [f"{self.bindir}/postgres", "-D", str(self.data), *options]

    def admin_url(self) -> URL:
        return URL.create(
            self.drivername,
            username="postgres",
            database="postgres",
            query={"host": str(self.root), "port": str(self.port)},
        )

    def _create_app_user(self) -> None:
        with self.admin().connect() as conn:
            conn.execute(text(f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'"))

    def _create_database(self, conn: Connection, name: str) -> None:
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER {DB_USER}'))

    def _seal_template(self) -> None:
        with self.admin().connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{TEMPLATE_DB}" IS_TEMPLATE true'))

    def _clone(self, conn: Connection, name: str) -> None:
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER {DB_USER} TEMPLATE "{TEMPLATE_DB}"'))

    def _drop(self, conn: Connection, name: str) -> None:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- MariaDB --------------------------------------------------------------------------------

MARIADB_DIRS = ["/usr/sbin", "/usr/bin"]


class MariaDbServer(DbServer):
    """MariaDB: ``mariadb-install-db``, then ``mariadbd --no-defaults`` (SIGTERM shuts down)."""

    kind = "mysql"
    drivername = "mysql+pymysql"
    os_user = "mysql"
    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, port: int, daemon: str, install_db: str) -> None:
        super().__init__(root, port)
        self.daemon = daemon
        self.install_db = install_db
        self.socket = root / "mysqld.sock"
        self._template_tables: list[str] = []
        self._template_versions: list[str] = []

    @classmethod
    def binaries(cls) -> tuple[str, str] | None:
        """(mariadbd, mariadb-install-db), or None."""
        daemon = find_binary("mariadbd", MARIADB_DIRS)
        install_db = find_binary("mariadb-install-db", MARIADB_DIRS)
        if daemon is None or install_db is None:
            return None
        return daemon, install_db

    def _initdb(self) -> None:
        # root@localhost authenticates by unix_socket: this (root) process, over the socket
        self.run_as_owner(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.data}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ]
        )

    def _server_argv(self) -> list[str]:
        return [
            self.daemon,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'mariadbd.pid'}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4",
        ]

    def admin_url(self) -> URL:
        return URL.create("mysql+pymysql", username="root", query={"unix_socket": str(self.socket)})

    def _create_app_user(self) -> None:
        with self.admin().connect() as conn:
            conn.execute(text(f"CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}'"))
            conn.execute(text(f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'%'"))

    def _create_database(self, conn: Connection, name: str) -> None:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))

    def _seal_template(self) -> None:
        """Capture the template's CREATE TABLE statements and alembic_version rows once."""
        with self.admin().connect() as conn:
            conn.execute(text(f"USE `{TEMPLATE_DB}`"))
            tables = conn.execute(text("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'"))
            names = [row[0] for row in tables]
            self._template_tables = [
                conn.execute(text(f"SHOW CREATE TABLE `{table}`")).one()[1] for table in names
            ]
            self._template_versions = list(
                conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )

    def _clone(self, conn: Connection, name: str) -> None:
        self._create_database(conn, name)
        conn.execute(text(f"USE `{name}`"))
        conn.execute(text("SET SESSION foreign_key_checks = 0"))
        for statement in self._template_tables:
            conn.exec_driver_sql(statement)
        for version in self._template_versions:
            conn.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": version})

    def _drop(self, conn: Connection, name: str) -> None:
        sessions = conn.execute(
            text(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = :db AND id != CONNECTION_ID()"
            ),
            {"db": name},
        ).scalars()
        for session in list(sessions):
            # a session may end between the listing and the KILL ("Unknown thread id")
            with contextlib.suppress(DBAPIError):
                conn.execute(text(f"KILL CONNECTION {int(session)}"))
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))


# -- pytest fixtures ------------------------------------------------------------------------


def start_server(factory: Callable[[Path, int], DbServer], prefix: str, owner: str) -> DbServer:
    """Start a server from ``factory(root, port)``, retrying when its port got taken."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = factory(_owned_tempdir(prefix, owner), free_port())
        try:
            server.start()
        except ServerStartError:
            if attempt == START_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable")


def _require_user(name: str) -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        unavailable(f"the OS user {name!r} does not exist (its server package creates it)")


def _require_glance() -> None:
    """Glance's ``db sync`` builds the schema: it needs the ``interop`` extra."""
    if importlib.util.find_spec("glance") is None:
        unavailable("Glance is not installed: install the 'interop' extra")


def new_postgres_server() -> PostgresServer:
    """Start a PostgreSQL server now (skip, or fail in CI, when it is not installed)."""
    bindir = PostgresServer.binaries()
    if bindir is None:
        unavailable("PostgreSQL's initdb/postgres not found (apt-get install postgresql)")
    _require_user("postgres")

    def factory(root: Path, port: int) -> DbServer:
        return PostgresServer(root, port, bindir)

    server = start_server(factory, "gca-pg-", "postgres")
    assert isinstance(server, PostgresServer)
    return server


def new_mariadb_server() -> MariaDbServer:
    """Start a MariaDB server now (skip, or fail in CI, when it is not installed)."""
    binaries = MariaDbServer.binaries()
    if binaries is None:
        unavailable("mariadbd/mariadb-install-db not found (apt-get install mariadb-server)")
    _require_user("mysql")

    def factory(root: Path, port: int) -> DbServer:
        return MariaDbServer(root, port, *binaries)

    server = start_server(factory, "gca-my-", "mysql")
    assert isinstance(server, MariaDbServer)
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, stopped at its end."""
    server = new_postgres_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDbServer]:
    """A MariaDB server for the whole session, stopped at its end."""
    server = new_mariadb_server()
    try:
        yield server
    finally:
        server.stop()


SERVER_FIXTURES = {"postgresql": "postgres_server", "mysql": "mariadb_server"}


@pytest.fixture(params=sorted(SERVER_FIXTURES))
def glance_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database with Glance's db-synced schema, on each real server: its URL.

    No ``node_reference`` rows exist: add them with :func:`register_node`.
    """
    _require_glance()
    server: DbServer = request.getfixturevalue(SERVER_FIXTURES[request.param])
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = server.clone_template(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
def glance_db_sqlite(tmp_path: Path) -> str:
    """An SQLite database with Glance's centralized cache tables (the replica): its URL."""
    url = f"sqlite:///{tmp_path / 'glance.sqlite'}"
    engine = create_engine(url)
    try:
        create_glance_schema(engine)
    finally:
        engine.dispose()
    return url


def register_node(url: str, node_url: str) -> int:
    """Insert a ``node_reference`` row for ``node_url`` (as glance-api does); its id."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO node_reference (node_reference_url) VALUES (:url)"),
                {"url": node_url},
            )
            node_id: int = conn.execute(
                text(
                    "SELECT node_reference_id FROM node_reference WHERE node_reference_url = :url"
                ),
                {"url": node_url},
            ).scalar_one()
    finally:
        engine.dispose()
    return node_id
