"""The production topology of deploy/ on this machine: code server, webserver, daemon.

The three commands are read from deploy/docker-compose.yml and run as they are, with only the
container-specific values swapped (listen address, ports, the workspace file's path): what the
tests prove is what the compose file (and the image) runs. Each process is owned (it dies with
the test, SIGKILL included) and logs to a file that a failing test prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from vt_pipeline.emulators.processes import Watchdog, terminate_group
from vt_pipeline.emulators.rabbitmq import free_port
from vt_pipeline_tests.processes import spawn_logged

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
# Where the image keeps the repository (deploy/Dockerfile's WORKDIR).
IMAGE_APP_DIR = "/opt/dagster/app"
SERVICES = ("vt-pipeline-code", "vt-pipeline-webserver", "vt-pipeline-daemon")
CODE_PORT, WEB_PORT = "4000", "3000"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_command(service: str) -> list[str]:
    command = compose()["services"][service]["command"]
    return [str(part) for part in command]


def local_command(service: str, code_port: int, web_port: int, workspace: Path) -> list[str]:
    """The compose service's command for this machine: same program and flags, loopback, free
    ports, this venv's executables, the test's workspace file."""
    swaps = {
        "0.0.0.0": "127.0.0.1",
        CODE_PORT: str(code_port),
        WEB_PORT: str(web_port),
        f"{IMAGE_APP_DIR}/deploy/workspace.yaml": str(workspace),
    }
    program, *args = compose_command(service)
    executable = Path(sys.executable).parent / program
    return [str(executable), *(swaps.get(arg, arg) for arg in args)]


class GraphQLError(RuntimeError):
    """The webserver answered a GraphQL request with errors."""


class Topology:
    """Code server, webserver and daemon against a PostgreSQL instance in `home`."""

    def __init__(self, home: Path, env: Mapping[str, str]) -> None:
        self.home = home
        self.env = dict(env)
        self.code_port = free_port()
        self.web_port = free_port()
        self.workspace = home / "workspace.yaml"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._watchdogs: list[Watchdog] = []
        self._stack = ExitStack()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def log(self, service: str) -> Path:
        return self.home / f"{service}.log"

    def logs(self, lines: int = 40) -> str:
        chunks = []
        for service in SERVICES:
            text = (
                self.log(service).read_text(errors="replace") if self.log(service).exists() else ""
            )
            chunks.append(f"--- {service}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(chunks)

    def start(self, timeout: float = 90.0) -> Topology:
        shutil.copy(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        server = workspace["load_from"][0]["grpc_server"]
        server.update(host="127.0.0.1", port=self.code_port)
        self.workspace.write_text(yaml.safe_dump(workspace))
        for service in SERVICES:
            self._spawn(service)
            if service == "vt-pipeline-code":
                self.wait_for(lambda: _port_open(self.code_port), "the code server", timeout)
        self.wait_for(self._location_loaded, "the webserver and the code location", timeout)
        return self

    def _spawn(self, service: str) -> None:
        command = local_command(service, self.code_port, self.web_port, self.workspace)
        process, watchdog = spawn_logged(
            command, self.log(service), {**self.env, "DAGSTER_HOME": str(self.home)}, self.home
        )
        self.processes[service] = process
        self._watchdogs.append(watchdog)

    def crash_code_server(self, timeout: float = 90.0) -> None:
        """SIGKILL the code server's whole process group (its gRPC server and the run workers
        it started: a container killed by the OOM killer), then start it again, as a container
        restart policy does."""
        process = self.processes.pop("vt-pipeline-code")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.wait_for(lambda: not _port_open(self.code_port), "the code server to die", 10)
        self._spawn("vt-pipeline-code")
        self.wait_for(lambda: _port_open(self.code_port), "the code server to restart", timeout)

    def stop(self) -> None:
        """SIGTERM all three at once (each shuts down gracefully), then reap them in turn."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for service in reversed(SERVICES):
            process = self.processes.pop(service, None)
            if process is not None:
                terminate_group(process, grace=20.0)
        for watchdog in self._watchdogs:
            watchdog.release()
        self._watchdogs.clear()

    def __enter__(self) -> Topology:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the webserver's GraphQL API, as the UI uses it ----------------------------------------
    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    def wait_for(self, ready: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for service, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{service} exited ({process.returncode}):\n{self.logs()}")
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}"
                )
            time.sleep(0.5)

    def _location_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )
        except (OSError, GraphQLError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise AssertionError(f"the code location failed to load: {loaded['message']}")
            if loaded.get("__typename") == "RepositoryLocation":
                return True
        return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def environ_without(prefixes: tuple[str, ...]) -> dict[str, str]:
    """The test process's environment minus variables that would leak into the topology."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
