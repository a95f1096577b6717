"""The container and cluster files, checked the way this machine can (no container daemon).

- every service command of the compose file is a valid invocation, and the topology test runs
  exactly those commands (it reads them from the file);
- the image's entry point is the compose file's code server, and its install step is the
  lock-file install of scripts/setup.sh (which CI runs), without the dev tools;
- the Helm values start the same code server, with K8sRunLauncher, PostgreSQL and the secrets
  from a Kubernetes secret;
- every environment variable these files name is one the code (or deploy/dagster.yaml) reads;
- the lock files pin every dependency, satisfy pyproject.toml, and are what this venv runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from vt_pipeline.enrichment import settings as enrichment_settings
from vt_pipeline.livehunt import settings as livehunt_settings
from vt_pipeline_tests.deploy.topology import (
    DEPLOY,
    REPO_ROOT,
    SERVICES,
    compose,
    compose_command,
    local_command,
)

HELM_VALUES = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"
DEV_LOCK = REPO_ROOT / "requirements-dev.lock"
# Read by Dagster itself, not by vt_pipeline.
DAGSTER_VARIABLES = {"DAGSTER_HOME"}


def variables_the_code_reads() -> set[str]:
    """Names in vt_pipeline's source (string constants), the settings' prefixed fields, and the
    `env:` references of deploy/dagster.yaml."""
    names: set[str] = set()
    for path in (REPO_ROOT / "vt_pipeline").rglob("*.py"):
        if "emulators" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", node.value)
            ):
                names.add(node.value)
    for module, model in (
        (livehunt_settings, livehunt_settings.LivehuntSettings),
        (enrichment_settings, enrichment_settings.EnrichmentSettings),
    ):
        names |= {module.ENV_PREFIX + field.upper() for field in model.model_fields}
    instance = (DEPLOY / "dagster.yaml").read_text()
    names |= set(re.findall(r"env:\s*([A-Z_][A-Z0-9_]*)", instance))
    return names


def test_the_topology_test_runs_every_service_of_the_compose_file() -> None:
    services = compose()["services"]
    ours = {name for name, service in services.items() if "command" in service}
    assert ours == set(SERVICES)
    # The others are upstream images (PostgreSQL), not vt_pipeline commands.
    assert {name for name in services if name not in ours} == {"vt-pipeline-postgres"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_command_is_a_valid_invocation(service: str, tmp_path: Path) -> None:
    """The program and subcommands exist, and every flag is one that subcommand accepts."""
    command = local_command(service, 4001, 3001, tmp_path / "workspace.yaml")
    words = [word for word in command[1:] if not word.startswith("-")]
    subcommands = []
    for word in words:  # leading words before the first flag are subcommands
        if command[1 + len(subcommands)] != word:
            break
        subcommands.append(word)
    helped = subprocess.run(
        [command[0], *subcommands, "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    for flag in (word for word in command if word.startswith("-")):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", helped.stdout), (flag, helped.stdout)


def test_the_image_runs_the_compose_code_server_and_nothing_else() -> None:
    text = DOCKERFILE.read_text()
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert cmd, "the Dockerfile needs an exec-form CMD"
    assert ast.literal_eval(cmd.group(1)) == compose_command("vt-pipeline-code")
    assert "ENTRYPOINT" not in text
    assert "emulate" not in text  # no emulator, no broker in the image
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    for service in ("vt-pipeline-code", "vt-pipeline-webserver", "vt-pipeline-daemon"):
        spec = compose()["services"][service]
        assert spec["image"] == compose()["services"]["vt-pipeline-code"]["image"]


def pip_installs(script: str) -> list[list[str]]:
    """The arguments of every `pip install` a shell script or a Dockerfile's RUN lines run."""
    joined = script.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True) if part.strip() else []
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def test_the_image_installs_the_lock_file_as_ci_does_without_dev_tools() -> None:
    image = pip_installs(DOCKERFILE.read_text())
    setup = pip_installs((REPO_ROOT / "scripts" / "setup.sh").read_text())
    quiet = {"--quiet", "--upgrade"}
    image_steps = [[w for w in step if w not in quiet] for step in image]
    setup_steps = [[w for w in step if w not in quiet] for step in setup]
    # CI: the dev lock (which includes requirements.lock), then the project without resolving.
    assert ["-r", "requirements-dev.lock"] in setup_steps
    assert ["--no-deps", "-e", "."] in setup_steps
    assert "-r requirements.lock" in DEV_LOCK.read_text().splitlines()
    # The image: the same runtime lock, then the project the same way (not editable).
    assert image_steps == [["-r", "requirements.lock"], ["--no-deps", "."]]
    dev_only = {line.split("==")[0].lower() for line in pins(DEV_LOCK)}
    assert {"pytest", "ruff"} <= dev_only
    assert not dev_only & {name.lower() for name in pins(LOCK)}


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            found[name] = version
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_dependency_within_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    locked = {normalized(n): v for n, v in {**pins(LOCK), **pins(DEV_LOCK)}.items()}
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for spec in map(Requirement, wanted):
        version = locked.get(normalized(spec.name))
        assert version is not None, f"{spec.name} is not in the lock files"
        assert spec.specifier.contains(version), f"{spec.name}=={version} is not {spec}"
    assert locked["sqlalchemy"].startswith("2.0.")  # dagster-postgres needs < 2.1


def test_this_environment_runs_the_locked_versions() -> None:
    """What the tests pass with is what the lock says (a stale venv: run scripts/setup.sh)."""
    drift = {}
    for name, version in {**pins(LOCK), **pins(DEV_LOCK)}.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (version, installed)
    assert not drift, f"locked vs installed (run scripts/setup.sh): {drift}"


def compose_variables() -> dict[str, set[str]]:
    """Per vt_pipeline service: the variables its environment sets and the ones it
    interpolates (`${NAME...}`) from the .env file."""
    found = {}
    for name in SERVICES:
        environment: dict[str, Any] = compose()["services"][name].get("environment") or {}
        names = set(environment)
        for value in environment.values():
            names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", str(value)))
        found[name] = names
    return found


def test_every_variable_the_compose_file_names_is_read_by_the_code() -> None:
    read = variables_the_code_reads() | DAGSTER_VARIABLES
    for service, names in compose_variables().items():
        assert names, service
        assert not names - read, f"{service}: {sorted(names - read)} are read by nothing"
    # Every process reaches the same PostgreSQL instance.
    instance = {name for name in read if name.startswith("DAGSTER_POSTGRES_")}
    assert len(instance) == 5
    for service, names in compose_variables().items():
        assert instance <= names, service


def test_the_upstream_connector_variables_pass_through_to_the_code_server() -> None:
    code = compose_variables()["vt-pipeline-code"]
    upstream = {
        "OPENCTI_URL",
        "OPENCTI_TOKEN",
        "CONNECTOR_ID",
        "CONNECTOR_DURATION_PERIOD",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY",
        "VIRUSTOTAL_TOKEN",
        "VIRUSTOTAL_MAX_TLP",
    }
    assert upstream <= code


def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_helm_values_run_the_image_code_server_with_k8s_runs_and_postgres() -> None:
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    # The chart runs `dagster code-server start -h 0.0.0.0 -p <port>` + codeServerArgs.
    code_server = compose_command("vt-pipeline-code")
    flags = code_server[3:]
    without_listen = [w for i, w in enumerate(flags) if not {w, flags[i - 1]} & {"-h", "-p"}]
    assert deployment["codeServerArgs"] == without_listen
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is True
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["concurrency"]["pools"]["defaultLimit"] == 2
    env = {item["name"]: item for item in deployment["env"]}
    for secret in ("VIRUSTOTAL_TOKEN", "OPENCTI_TOKEN"):
        assert "value" not in env[secret]
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"]
    # Every run pod reaches the budget in the chart's PostgreSQL, the password from its secret.
    instance = {name for name in env if name.startswith("DAGSTER_POSTGRES_")}
    assert len(instance) == 5
    assert env["DAGSTER_POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    # Runs are pods of their own: the sweeper must not judge them by the code server's pids.
    assert "VT_PIPELINE_RUNS_ON_CODE_SERVER" not in env
    read = variables_the_code_reads()
    assert not set(env) - read, sorted(set(env) - read)


def test_compose_and_dagster_yaml_parse_for_dagster() -> None:
    """deploy/dagster.yaml is a valid instance file (its PostgreSQL part is exercised by
    test_postgres and test_topology)."""
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert "postgres" in config["storage"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    code = compose_command("vt-pipeline-code")
    assert str(server["port"]) == code[code.index("-p") + 1]
    assert server["host"] == "vt-pipeline-code"
    assert server["location_name"] == code[code.index("--location-name") + 1]
