"""A throwaway, real RabbitMQ broker for tests, the demo and benchmarks.

OpenCTI connectors talk to RabbitMQ directly (push queue for bundles, listen queue for
enrichment requests), so the emulated OpenCTI needs a real broker: this starts Debian's
`rabbitmq-server` as the current user, on free loopback ports, with every file (Mnesia,
logs, config, Erlang cookie) in a temporary directory, and its own `epmd` on its own port, so
several brokers coexist and nothing leaks into `/var/lib/rabbitmq` or a system epmd.

    with RabbitMQ() as mq:
        pika.BlockingConnection(mq.connection_parameters())

The broker and its epmd never outlive their owner: each runs in its own process group watched by
a watchdog (`processes.spawn_owned`) that stops the group and removes the temporary directory if
the owner dies without calling `stop()` (SIGKILL, a crash); `atexit` covers a normal exit.
`restart()` stops and starts the node on the same ports and data (durable queues and persistent
messages survive), as a broker restart in production does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from vt_pipeline.emulators.processes import Service, Watchdog, spawn_owned, terminate_group

# Where Debian/Ubuntu put the real start script: the /usr/sbin wrapper would `su rabbitmq`
# when run as root (and then could not write to our temporary directory).
_SERVER_CANDIDATES = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/lib/rabbitmq/sbin/rabbitmq-server",
)
_INSTALL_HINT = (
    "rabbitmq-server is not installed: run `apt-get install rabbitmq-server` "
    "(Debian/Ubuntu; the tests start a private broker, the system service may stay stopped)"
)


class RabbitMQError(RuntimeError):
    """The broker could not be started (missing install, crash or timeout at boot)."""


@dataclass(frozen=True)
class AMQPConnectionInfo:
    """How to reach a broker: what OpenCTI's `registerConnector` hands to connectors."""

    host: str
    port: int
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    use_ssl: bool = False

    @property
    def amqp_url(self) -> str:
        vhost = "%2F" if self.vhost == "/" else self.vhost
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"

    @classmethod
    def from_url(cls, url: str) -> AMQPConnectionInfo:
        """Parse `amqp://user:pass@host:port/vhost` (what `--amqp-url` takes)."""
        params = pika.URLParameters(url)
        credentials = params.credentials
        return cls(
            host=params.host,
            port=params.port,
            user=getattr(credentials, "username", "guest"),
            password=getattr(credentials, "password", "guest"),
            vhost=params.virtual_host,
            use_ssl=params.ssl_options is not None,
        )

    def connection_parameters(self, **kwargs: Any) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            **kwargs,
        )


# Below Linux's ephemeral range (32768-60999): ports the OS hands to `bind(0)` callers (the
# emulators, clients) cannot be picked here, which makes a clash before the broker binds rare.
_PORT_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, outside the ephemeral range (a race remains until the broker binds
    it: `RabbitMQ.start` retries with new ports when that race is lost)."""
    for _ in range(200):
        port = random.randint(*_PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RabbitMQError(f"no free port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} on {host}")


def find_rabbitmq_server() -> str:
    """Path of the real `rabbitmq-server` script; RabbitMQError with the apt hint if missing."""
    for candidate in _SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    if found and os.access(found, os.X_OK):
        # Resolve /usr/sbin wrappers that are symlinks to the script itself.
        return os.path.realpath(found) if os.path.islink(found) else found
    raise RabbitMQError(_INSTALL_HINT)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class RabbitMQ(Service):
    """A private RabbitMQ node: start() / stop(), or use it as a context manager.

    Guest/guest works because the broker only listens on loopback (RabbitMQ refuses guest
    from elsewhere). `startup_seconds` records how long the last start took.
    """

    host = "127.0.0.1"

    def __init__(self, startup_timeout: float = 60.0, keep_logs_on_failure: bool = True) -> None:
        self.startup_timeout = startup_timeout
        self.keep_logs_on_failure = keep_logs_on_failure
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = ""
        self.directory: Path | None = None
        self.startup_seconds: float | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._watchdogs: dict[str, Watchdog] = {}
        self._env: dict[str, str] = {}

    # -- public API ---------------------------------------------------------------------------
    @property
    def connection_info(self) -> AMQPConnectionInfo:
        self._require_running()
        return AMQPConnectionInfo(host=self.host, port=self.port)

    @property
    def amqp_url(self) -> str:
        return self.connection_info.amqp_url

    def connection_parameters(self, **kwargs: Any) -> pika.ConnectionParameters:
        return self.connection_info.connection_parameters(**kwargs)

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def start(self, attempts: int = 3) -> RabbitMQ:
        """Boot the node and return once it accepts an AMQP login (typically 3-8 s).

        A port taken between choosing it and binding it (`eaddrinuse`) means new ports and
        another boot, up to `attempts` times.
        """
        if self._server is not None:
            raise RabbitMQError("already started")
        for _ in range(attempts - 1):
            try:
                return self._boot()
            except RabbitMQError as exc:
                if "eaddrinuse" not in str(exc):
                    raise
        return self._boot()

    def _boot(self) -> RabbitMQ:
        find_rabbitmq_server()
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="vt-pipeline-rabbitmq-"))
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.nodename = f"vtp-{uuid.uuid4().hex[:12]}@localhost"
        env = self._env = self._environment()
        try:
            # Our own epmd, in the foreground, so we own its pid and it dies with us.
            self._epmd, self._watchdogs["epmd"] = spawn_owned(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                grace=3.0,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_for(lambda: _port_open(self.host, self.epmd_port), "epmd", 10.0)
            self._start_server()
        except BaseException:
            logs = self._tail_logs()
            self.stop(remove_directory=not self.keep_logs_on_failure)
            if isinstance(logs, str) and logs:
                raise RabbitMQError(f"RabbitMQ did not start; last log lines:\n{logs}") from None
            raise
        self.startup_seconds = time.monotonic() - started
        atexit.register(self.stop)  # no orphan broker if the owner forgets (or crashes in) stop
        return self

    def _start_server(self) -> None:
        """Start the node (on the ports and data of `self._env`) and wait for an AMQP login."""
        assert self.directory is not None
        log = (self.directory / "server.out").open("ab")
        with log:
            self._server, self._watchdogs["server"] = spawn_owned(
                [find_rabbitmq_server()],
                grace=15.0,
                cleanup=[self.directory],
                env=self._env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_for(self._accepts_amqp, "AMQP login", self.startup_timeout)

    def _stop_server(self) -> None:
        if self._server is not None:
            terminate_group(self._server, grace=15.0)
            self._server = None
        watchdog = self._watchdogs.pop("server", None)
        if watchdog is not None:
            watchdog.release()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the node, wait `down_seconds`, start it again on the same ports and data:
        connections drop, durable queues and persistent messages survive."""
        self._require_running()
        self._stop_server()
        time.sleep(down_seconds)
        self._start_server()

    def stop(self, remove_directory: bool = True) -> None:
        """Stop the node (SIGTERM: graceful shutdown), its epmd, and remove its directory."""
        atexit.unregister(self.stop)
        self._stop_server()
        if self._epmd is not None:
            terminate_group(self._epmd, grace=3.0)
            self._epmd = None
        for watchdog in self._watchdogs.values():
            watchdog.release()
        self._watchdogs.clear()
        if remove_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __repr__(self) -> str:
        state = f"port={self.port}" if self.running else "stopped"
        return f"<RabbitMQ {self.nodename or '-'} {state}>"

    # -- internals ----------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        assert self.directory is not None
        d = self.directory
        (d / "mnesia").mkdir()
        (d / "log").mkdir()
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")  # shadow /etc/rabbitmq/rabbitmq-env.conf
        (d / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = {self.host}:{self.port}",
                    "log.console = false",
                    "log.file.level = warning",
                    # Fewer disk checks, no alarms on a nearly full CI disk.
                    "disk_free_limit.absolute = 1MB",
                    "",
                ]
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie goes to $HOME/.erlang.cookie
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
        )
        return env

    def _accepts_amqp(self) -> bool:
        if self._server is not None and self._server.poll() is not None:
            raise RabbitMQError(f"rabbitmq-server exited with code {self._server.returncode}")
        if not _port_open(self.host, self.port):
            return False
        try:
            params = AMQPConnectionInfo(self.host, self.port).connection_parameters(
                connection_attempts=1, socket_timeout=2, blocked_connection_timeout=2
            )
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def _wait_for(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RabbitMQError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def _tail_logs(self, lines: int = 30) -> str:
        if self.directory is None:
            return ""
        chunks = []
        for path in [self.directory / "server.out", *sorted((self.directory / "log").glob("*"))]:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    chunks.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(chunks)

    def _require_running(self) -> None:
        if not self.running:
            raise RabbitMQError("RabbitMQ is not running (call start() or use `with`)")
