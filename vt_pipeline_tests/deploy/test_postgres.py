"""The private PostgreSQL runner, and the deployment's instance (deploy/dagster.yaml) on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from vt_pipeline.emulators.postgres import PostgreSQL, PostgreSQLError
from vt_pipeline.livehunt.assets import livehunt_notifications
from vt_pipeline_tests.conftest import ResourcesFactory, materialize_hours, partition_key
from vt_pipeline_tests.deploy.topology import DEPLOY, REPO_ROOT
from vt_pipeline_tests.processes import family, live_processes, survivors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgreSQL]:
    with PostgreSQL() as server:
        yield server


@pytest.fixture
def instance(
    postgres: PostgreSQL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance from deploy/dagster.yaml, in its own database of the cluster."""
    database = f"dagster_{tmp_path.name.lower().replace('-', '_')[-40:]}"
    connection = postgres.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
    finally:
        connection.close()
    for name, value in {**postgres.dagster_env(), "DAGSTER_POSTGRES_DB": database}.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as opened:
        yield opened


def test_a_private_cluster_with_a_password_login(postgres: PostgreSQL) -> None:
    connection = postgres.connect()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database(), current_setting('port')")
        assert cursor.fetchone() == (postgres.user, postgres.database, str(postgres.port))
    connection.close()
    env = postgres.dagster_env()
    assert env["DAGSTER_POSTGRES_PORT"] == str(postgres.port)
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=postgres.host,
            port=postgres.port,
            user=postgres.user,
            password="wrong",
            dbname=postgres.database,
        )
    # Run as `nobody` when we are root: PostgreSQL refuses root.
    assert postgres.directory is not None
    owner = (postgres.directory / "data").stat().st_uid
    assert owner == (os.geteuid() if os.geteuid() else 65534)


def test_stop_removes_the_server_and_its_files() -> None:
    server = PostgreSQL().start()
    directory, port = server.directory, server.port
    assert directory is not None and directory.exists()
    server.stop()
    assert not directory.exists()
    assert not server.running
    with pytest.raises(PostgreSQLError, match="not running"):
        server.dagster_env()
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_server_dies_with_its_owner_even_on_sigkill(tmp_path: Path) -> None:
    """The watchdog stops the cluster and removes its directory when the owner is SIGKILLed."""
    script = (
        "import json, sys, time\n"
        "from vt_pipeline.emulators.postgres import PostgreSQL\n"
        "pg = PostgreSQL().start()\n"
        "print(json.dumps({'pid': pg._server.pid, 'dir': str(pg.directory)}), flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert owner.stdout is not None
        started = json.loads(owner.stdout.readline())
        server_pid, directory = started["pid"], Path(started["dir"])
        # The postmaster and its workers (each in a session of its own: PostgreSQL's setsid).
        group = {server_pid} | family(server_pid)
        assert server_pid in live_processes() and len(group) > 1
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert survivors(group, timeout=30) == set()
        deadline = time.monotonic() + 10
        while directory.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not directory.exists()
    finally:
        if owner.poll() is None:
            owner.kill()


def test_the_deployment_instance_is_postgresql_with_the_queue_and_pools(
    instance: dg.DagsterInstance,
) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert instance.event_log_storage.supports_global_concurrency_limits
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
    assert instance.run_monitoring_enabled


def test_a_livehunt_backfill_over_several_windows_on_postgresql(
    instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory
) -> None:
    """One run over four windows, then an overlapping one: every window is recorded once per
    run in PostgreSQL, the VirusTotal pool's slots are all given back."""
    first = materialize_hours(instance, livehunt_resources(), 0, 3)
    assert first.success
    again = materialize_hours(instance, livehunt_resources(), 2, 5)
    assert again.success
    materialized = instance.get_materialized_partitions(livehunt_notifications.key)
    assert materialized == {partition_key(hour) for hour in range(6)}
    records = instance.fetch_materializations(livehunt_notifications.key, limit=100).records
    per_window: dict[str | None, int] = {}
    for record in records:
        per_window[record.partition_key] = per_window.get(record.partition_key, 0) + 1
    assert per_window == {partition_key(h): 2 if h in (2, 3) else 1 for h in range(6)}
    info = instance.event_log_storage.get_concurrency_info("virustotal")
    assert info.claimed_slots == [] and info.slot_count == 2


def test_on_shared_storage_untagged_dead_runs_are_ended_only_when_runs_live_by_the_code_server(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL may serve several machines: an untagged run's pid means nothing here unless
    the deployment says every run runs beside the code server (VT_PIPELINE_RUNS_ON_CODE_SERVER,
    what deploy/docker-compose.yml sets)."""
    from vt_pipeline.run_health import RUNS_ON_CODE_SERVER_ENV, end_dead_runs
    from vt_pipeline_tests.test_run_health import dead_pid, started_run

    dead = started_run(instance, dead_pid())
    monkeypatch.delenv(RUNS_ON_CODE_SERVER_ENV, raising=False)
    assert end_dead_runs(instance) == []
    monkeypatch.setenv(RUNS_ON_CODE_SERVER_ENV, "true")
    assert [run.run_id for run in end_dead_runs(instance)] == [dead]
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    monkeypatch.setenv(RUNS_ON_CODE_SERVER_ENV, "maybe")
    with pytest.raises(Exception, match=RUNS_ON_CODE_SERVER_ENV):
        end_dead_runs(instance)
