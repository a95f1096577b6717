"""A throwaway, real PostgreSQL server for tests, the demo and a local production topology.

Dagster's shared-deployment instance (deploy/dagster.yaml) keeps runs, events, schedules and
sensors in PostgreSQL. This starts Debian's PostgreSQL (`initdb` + `postgres` from
/usr/lib/postgresql/<version>/bin) as a private cluster: data, socket and logs in a temporary
directory, listening on loopback on a free port, with a password login (what
DAGSTER_POSTGRES_PASSWORD carries in production). PostgreSQL refuses to run as root: when the
owner is root, the cluster's processes run as `nobody`.

    with PostgreSQL() as pg:
        os.environ.update(pg.dagster_env())   # DAGSTER_POSTGRES_HOSTNAME, _PORT, ...

Like the RabbitMQ runner, the server never outlives its owner: it runs in its own process group
watched by `processes.spawn_owned`'s watchdog, which stops it and removes the directory if the
owner dies without calling `stop()` (SIGKILL included); `atexit` covers a normal exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vt_pipeline.emulators.processes import (
    Service,
    Watchdog,
    interrupt_on_sigterm,
    spawn_owned,
    terminate_group,
)
from vt_pipeline.emulators.rabbitmq import free_port

_INSTALL_HINT = (
    "PostgreSQL is not installed: run `apt-get install postgresql` (Debian/Ubuntu; the tests "
    "start a private cluster, the system service may stay stopped)"
)
# What PostgreSQL's own scripts fall back to when run as root.
_UNPRIVILEGED_USER = "nobody"


class PostgreSQLError(RuntimeError):
    """The server could not be started (missing install, initdb failure, crash or timeout)."""


def find_postgres_bindir() -> Path:
    """The directory of `initdb` and `postgres`: the newest /usr/lib/postgresql/*/bin, else
    PATH. PostgreSQLError with the apt hint if there is none."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(Path(bindir) / "initdb", os.X_OK):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgreSQLError(_INSTALL_HINT)


class PostgreSQL(Service):
    """A private PostgreSQL cluster: start() / stop(), or use it as a context manager.

    One database (`database`) owned by the superuser `user`, who logs in with `password` over
    TCP on 127.0.0.1:`port`. Durability is traded for speed (fsync off): it is a test cluster.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        user: str = "dagster",
        database: str = "dagster",
        password: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.user = user
        self.database = database
        self.password = password or secrets.token_hex(12)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.directory: Path | None = None
        self.startup_seconds: float | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None

    # -- public API ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    @property
    def url(self) -> str:
        """A SQLAlchemy/libpq URL of the database (password included: keep it out of logs)."""
        self._require_running()
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads, as Dagster's Docker deployment names them."""
        self._require_running()
        return {
            "DAGSTER_POSTGRES_HOSTNAME": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "DAGSTER_POSTGRES_DB": self.database,
        }

    def connect(self) -> Any:
        """A psycopg2 connection to the database (autocommit)."""
        import psycopg2

        self._require_running()
        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.database,
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection

    def start(self, attempts: int = 3) -> PostgreSQL:
        """initdb, start the server, create the database; return once it accepts a login
        (typically 2-4 s). A port lost between choosing and binding it means another try."""
        if self._server is not None:
            raise PostgreSQLError("already started")
        bindir = find_postgres_bindir()
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="vt-pipeline-postgres-"))
        try:
            self._initdb(bindir)
            for attempt in range(attempts):
                try:
                    self._start_server(bindir)
                    break
                except PostgreSQLError as exc:
                    if "already in use" not in str(exc) or attempt == attempts - 1:
                        raise
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        atexit.register(self.stop)  # no orphan server if the owner forgets (or crashes in) stop
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, not waited for), then remove the
        directory."""
        atexit.unregister(self.stop)
        self._stop_server()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __repr__(self) -> str:
        state = f"port={self.port}" if self.running else "stopped"
        return f"<PostgreSQL {self.database} {state}>"

    # -- internals ----------------------------------------------------------------------------
    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that drop root to `nobody` (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self, bindir: Path) -> None:
        assert self.directory is not None
        d = self.directory
        (d / "socket").mkdir()
        password_file = d / "password"
        password_file.write_text(self.password + "\n")
        run_as = self._run_as()
        if run_as:
            for path in (d, d / "socket", password_file):
                os.chown(path, run_as["user"], run_as["group"])
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(d / "data"),
                "--username",
                self.user,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            ],
            cwd=d,
            env=self._environment(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **run_as,
        )
        password_file.unlink()
        if result.returncode != 0:
            raise PostgreSQLError(f"initdb failed:\n{(result.stdout + result.stderr)[-2000:]}")

    def _start_server(self, bindir: Path) -> None:
        assert self.directory is not None
        d = self.directory
        self.port = free_port(self.host)
        log = (d / "server.log").open("ab")
        with log:
            self._server, self._watchdog = spawn_owned(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(d / "data"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-k",
                    str(d / "socket"),
                    # A test cluster: speed over durability, room for a daemon, a webserver,
                    # a code server and their runs.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                grace=10.0,
                cleanup=[d],
                cwd=d,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._run_as(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while not self._accepts_login():
            if self._server.poll() is not None:
                logs = self._tail_log()
                self._stop_server()
                raise PostgreSQLError(f"postgres exited at start; last log lines:\n{logs}")
            if time.monotonic() > deadline:
                logs = self._tail_log()
                self._stop_server()
                raise PostgreSQLError(
                    f"timed out after {self.startup_timeout:.0f} s waiting for a login:\n{logs}"
                )
            time.sleep(0.1)

    def _create_database(self) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            connect_timeout=5,
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            connection.close()

    def _accepts_login(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname="postgres",
                connect_timeout=2,
            ).close()
        except psycopg2.OperationalError:
            return False
        return True

    def _stop_server(self) -> None:
        if self._server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGINT)  # fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=10)
            terminate_group(self._server, grace=5.0)
            self._server = None
        if self._watchdog is not None:
            self._watchdog.release()
            self._watchdog = None

    def _environment(self) -> dict[str, str]:
        """No PG* variable of the owner leaks in (PGDATA, PGPORT would redirect the cluster)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env["LANG"] = "C.UTF-8"
        return env

    def _tail_log(self, lines: int = 30) -> str:
        if self.directory is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.directory / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def _require_running(self) -> None:
        if not self.running:
            raise PostgreSQLError("PostgreSQL is not running (call start() or use `with`)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`vt-pipeline emulate postgres`: the options of a private cluster."""
    parser.add_argument("--user", default="dagster")
    parser.add_argument("--database", default="dagster")
    parser.add_argument("--password", default=None, help="default: a random one, printed")


def run(args: argparse.Namespace) -> int:
    """Serve a private cluster until Ctrl-C / SIGTERM; print the DAGSTER_POSTGRES_* exports
    that point deploy/dagster.yaml at it."""
    with interrupt_on_sigterm(), PostgreSQL(args.user, args.database, args.password) as pg:
        print(
            f"PostgreSQL on {pg.host}:{pg.port} (data in {pg.directory}); for deploy/dagster.yaml:"
        )
        for name, value in pg.dagster_env().items():
            print(f"export {name}={value}")
        print("Ctrl-C stops it and removes its data.", flush=True)
        try:
            while pg.running:
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
    return 1
