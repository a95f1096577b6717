"""The production topology on one machine, driven only through the webserver's GraphQL API.

PostgreSQL, RabbitMQ, the VirusTotal and OpenCTI emulators are real servers; the code server,
the webserver and the daemon run the commands of deploy/docker-compose.yml with
deploy/dagster.yaml. Nothing here calls an asset or a job: the schedule and the sensor are
turned on as the UI does, runs are launched and re-executed as the UI does, and the daemon and
the code server do the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.postgres import PostgreSQL
from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG, livehunt_partitions
from vt_pipeline_tests.conftest import PREMIUM_KEY
from vt_pipeline_tests.deploy.topology import REPO_ROOT, Topology, environ_without

pytestmark = pytest.mark.integration

LOCATION = {"repositoryLocationName": "vt_pipeline", "repositoryName": "__repository__"}
SCHEDULE = "livehunt_fresh_windows"
SENSOR = "opencti_enrichment_drain_sensor"  # drain mode, the default
ENRICHMENT_CONNECTOR_ID = str(uuid.UUID(int=0x5EED))
LAUNCH_RESULT = """
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on InvalidSubsetError { message }
"""


@pytest.fixture
def postgres() -> Iterator[PostgreSQL]:
    with PostgreSQL() as server:
        yield server


@pytest.fixture
def live_vt() -> Iterator[VirusTotalEmulator]:
    """Notifications over the last three hours, so that the schedule's open window has some."""
    end = datetime.now(UTC) + timedelta(minutes=5)
    corpus = generate_corpus(seed=88, notifications=40, start=end - timedelta(hours=3), end=end)
    emulator = VirusTotalEmulator(corpus, api_keys={PREMIUM_KEY: True})
    with emulator.serve():
        yield emulator


@pytest.fixture
def topology(
    tmp_path: Path,
    postgres: PostgreSQL,
    live_vt: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Topology]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **environ_without(("DAGSTER_", "VIRUSTOTAL_", "OPENCTI_", "CONNECTOR_", "VT_PIPELINE_")),
        **postgres.dagster_env(),
        "PYTHONPATH": str(REPO_ROOT),  # this checkout's code, whatever the venv installed
        "VIRUSTOTAL_API_URL": live_vt.url,
        "VIRUSTOTAL_TOKEN": PREMIUM_KEY,
        "OPENCTI_URL": opencti.url,
        "OPENCTI_TOKEN": opencti.token,
        "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": ENRICHMENT_CONNECTOR_ID,
        "CONNECTOR_DURATION_PERIOD": "PT1M",  # the schedule ticks every minute, not every 5
        "VT_PIPELINE_RUNS_ON_CODE_SERVER": "true",
        "VT_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
        # The drain run starts when a request waits and ends once idle: it is seen to succeed.
        "VT_PIPELINE_ENRICHMENT_DRAIN_IDLE_SECONDS": "10",
    }
    # The test reads the same instance (run status, events, slots) from PostgreSQL.
    for name, value in postgres.dagster_env().items():
        monkeypatch.setenv(name, value)
    with Topology(home, env) as running:
        # What a new PostgreSQL deployment does once (README, "Deploying"): set the pools'
        # limits explicitly. Dagster creates a pool's default limit on first use with a plain
        # INSERT, and two runs starting together then race (UniqueViolation fails one run).
        with instance_of(running) as instance:
            for pool in ("virustotal", "opencti"):
                instance.event_log_storage.set_concurrency_slots(pool, 2)
        yield running


def instance_of(topology: Topology) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(topology.home)))


def run_status(topology: Topology, run_id: str) -> str:
    data = topology.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id
    )
    return data["runOrError"]["status"]


def wait_for_status(topology: Topology, run_id: str, timeout: float, *wanted: str) -> str:
    final = {"SUCCESS", "FAILURE", "CANCELED"}
    status = topology.wait_for(
        lambda: (s := run_status(topology, run_id)) in final | set(wanted) and s,
        f"run {run_id} to end",
        timeout,
    )
    return status


def launched(result: dict[str, Any]) -> str:
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def start_schedule(topology: Topology) -> None:
    """What the UI's toggle does (Automation page): mutation startSchedule. Retried while the
    webserver has not yet reloaded the code location (just after the code server restarted)."""

    def started() -> bool:
        schedule = topology.graphql(
            """mutation($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) {
                 __typename ... on ScheduleStateResult { scheduleState { status } }
                 ... on PythonError { message } } }""",
            selector={**LOCATION, "scheduleName": SCHEDULE},
        )["startSchedule"]
        if schedule["__typename"] in ("ScheduleNotFoundError", "PythonError"):
            return False
        assert schedule["scheduleState"]["status"] == "RUNNING", schedule
        return True

    topology.wait_for(started, "the schedule to start", 60)


def start_sensor(topology: Topology) -> None:
    """What the UI's toggle does (Automation page): mutation startSensor."""
    sensor = topology.graphql(
        """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
             __typename ... on Sensor { sensorState { status } }
             ... on PythonError { message } } }""",
        selector={**LOCATION, "sensorName": SENSOR},
    )["startSensor"]
    assert sensor.get("sensorState", {}).get("status") == "RUNNING", sensor


def runs_of_schedule(topology: Topology) -> list[dict[str, str]]:
    data = topology.graphql(
        """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {
             ... on Runs { results { runId status } } } }""",
        tags=[{"key": "dagster/schedule_name", "value": SCHEDULE}],
    )
    return data["runsOrError"]["results"]


def launch_livehunt(topology: Topology, first: str, last: str) -> str:
    """The UI's "Materialize" over a range of Livehunt windows: one run of livehunt_job."""
    result = topology.graphql(
        f"""mutation($params: ExecutionParams!) {{ launchRun(executionParams: $params) {{
              {LAUNCH_RESULT} }} }}""",
        params={
            "selector": {**LOCATION, "jobName": "livehunt_job"},
            "mode": "default",
            "executionMetadata": {
                "tags": [
                    {"key": RANGE_START_TAG, "value": first},
                    {"key": RANGE_END_TAG, "value": last},
                ]
            },
        },
    )["launchRun"]
    return launched(result)


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
        if entry.dagster_event is not None and entry.dagster_event.pid:
            return entry.dagster_event.pid
    return None


def slots_held(instance: dg.DagsterInstance, run_id: str) -> int:
    info = instance.event_log_storage.get_concurrency_info("virustotal")
    return sum(slot.run_id == run_id for slot in info.claimed_slots)


def test_the_three_process_topology_on_postgresql(
    topology: Topology, opencti: OpenCTIEmulator, live_vt: VirusTotalEmulator
) -> None:
    start_sensor(topology)

    # 1. The code server's container dies (SIGKILL to it and the run worker it started) while a
    #    run holds a VirusTotal slot, and restarts: nothing is left to notice that run's death
    #    but the dead-run sweeper (a sensor the daemon ticks, evaluated in the new code server,
    #    where the runs run). It ends the run and frees its slot; a re-execution completes it.
    now = datetime.now(UTC).timestamp()
    first = livehunt_partitions.get_partition_key_for_timestamp(now - 3600)
    last = livehunt_partitions.get_partition_key_for_timestamp(now)
    live_vt.set_latency(3000)  # every VT call takes 3 s: the run is still working when killed
    with instance_of(topology) as instance:
        killed = launch_livehunt(topology, first, last)
        pid = topology.wait_for(
            lambda: slots_held(instance, killed) and run_worker_pid(instance, killed),
            "the run to hold a virustotal slot",
            60,
        )
        # Runs are launched in their own process, not in one of the three services.
        assert pid not in {process.pid for process in topology.processes.values()}
        topology.crash_code_server()
        # The schedule goes on now: its first tick (within a minute) is not caught by the crash.
        start_schedule(topology)
        live_vt.set_latency(0)

        # 2. Meanwhile an analyst clicks "enrich": the sensor (registered as the enrichment
        #    connector) starts a drain run that reads the request and completes the work.
        topology.wait_for(
            lambda: ENRICHMENT_CONNECTOR_ID in opencti.connectors,
            "the enrichment connector to register",
            60,
        )
        domain = opencti.create_observable("Domain-Name", sorted(live_vt.corpus.domains)[0])
        work_id = opencti.ask_enrichment(domain, ENRICHMENT_CONNECTOR_ID)

        assert wait_for_status(topology, killed, 90) == "FAILURE"
        messages = [entry.message for entry in instance.all_logs(killed)]
        assert any("dead-run sweep" in message for message in messages), messages[-5:]
        # The sweep frees the slots right after it reports the failure.
        topology.wait_for(lambda: slots_held(instance, killed) == 0, "the slot to be freed", 10)

        result = topology.graphql(
            f"""mutation($params: ReexecutionParams!) {{
                  launchRunReexecution(reexecutionParams: $params) {{ {LAUNCH_RESULT} }} }}""",
            params={"parentRunId": killed, "strategy": "FROM_FAILURE"},
        )["launchRunReexecution"]
        retry = launched(result)
        assert wait_for_status(topology, retry, 90) == "SUCCESS", topology.logs()

        work = opencti.wait_for_work(work_id, timeout=60)
        assert work.summary()["status"] == "complete" and not work.in_error, work.summary()
        enrichment_runs = instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/sensor_name": SENSOR})
        )
        assert enrichment_runs and all(
            run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
            for run in enrichment_runs
        )

    # 3. The schedule (every minute here) has ticked through the daemon, and its run completed.
    def schedule_succeeded() -> bool:
        runs = runs_of_schedule(topology)
        assert all(run["status"] not in ("FAILURE", "CANCELED") for run in runs), runs
        return any(run["status"] == "SUCCESS" for run in runs)

    topology.wait_for(schedule_succeeded, "a run of the Livehunt schedule to succeed", 100)
