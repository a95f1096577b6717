"""The drain mode: one long-lived run reads the listen queue itself and answers as requests come.

Real RabbitMQ, the OpenCTI and VirusTotal emulators, the real `vt_enrichment_drain_job` run in
process (and, for the crash, in a process of its own that is killed half way).
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pika
import pytest
from dagster._core.events import DagsterEventType, EngineEventData

from vt_pipeline.config import ConfigError
from vt_pipeline.emulators.opencti.amqp import listen_queue
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment import recovery
from vt_pipeline.enrichment.drain import (
    TAKEN_KEY,
    DrainLimits,
    drain_run_config,
    vt_enrichment_drain_job,
)
from vt_pipeline.enrichment.requests import DRAIN_JOB
from vt_pipeline.enrichment.sensor import (
    MODE_BATCH,
    MODE_DRAIN,
    SensorSettings,
    build_drain_sensor,
    build_enrichment_sensor,
    drain_wait_reason,
)
from vt_pipeline.opencti.listen_queue import ListenQueue
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID, OpenCTIResource
from vt_pipeline_tests.conftest import PREMIUM_KEY
from vt_pipeline_tests.enrichment.test_job import metadata

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def drain_once(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    **limits: Any,
) -> dg.ExecuteInProcessResult:
    """One drain run that ends once idle for a second."""
    config = DrainLimits(**{"idle_seconds": 1.0, "max_seconds": 60.0, **limits})
    return vt_enrichment_drain_job.execute_in_process(
        run_config=drain_run_config(config),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def answered_order(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The request ids a run recorded as answered, in the order it answered them."""
    order = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        value = (getattr(data, "metadata", None) or {}).get(recovery.ANSWERED_KEY)
        if value is not None:
            order.append(str(value.value))
    return order


def queued(rabbitmq: RabbitMQ, queue: str) -> int:
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def make_redelivered(cti_resource: OpenCTIResource, count: int) -> None:
    """Read `count` messages without acknowledging them and drop the channel: RabbitMQ gives
    them back, flagged redelivered, as after a drain run that died holding them."""
    with cti_resource.connector("enrichment") as cti, ListenQueue.of(cti) as queue:
        assert len(queue.read(count, 5.0)) == count


def own_connector(opencti: OpenCTIEmulator, **settings: Any) -> OpenCTIResource:
    """An enrichment connector (and listen queue) of the test's own, registered."""
    connector = OpenCTIResource(
        url=opencti.url,
        token=opencti.token,
        enrichment_connector_id=str(uuid.uuid4()),
        work_timeout_seconds=30,
        **settings,
    )
    with connector.connector("enrichment"):
        pass
    return connector


@pytest.fixture
def entities(opencti: OpenCTIEmulator, vt_corpus: Corpus) -> list[str]:
    """Observables VT knows: files, domains and IPv4 addresses."""
    files = [
        opencti.create_observable("StixFile", hashes={"SHA-256": s})
        for s in sorted(vt_corpus.files)[:4]
    ]
    domains = [opencti.create_observable("Domain-Name", d) for d in sorted(vt_corpus.domains)[:3]]
    ips = [opencti.create_observable("IPv4-Addr", i) for i in sorted(vt_corpus.ip_addresses)[:3]]
    return files + domains + ips


def test_clicks_are_answered_before_automatic_requests_and_bad_ones_leave_the_queue(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    entities: list[str],
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
) -> None:
    connector = own_connector(opencti, connector_auto=True)
    auto = [
        opencti.platform.ask_enrichment(e, connector.enrichment_connector_id, mode="auto").id
        for e in entities[:6]
    ]
    clicks = [opencti.ask_enrichment(e, connector.enrichment_connector_id) for e in entities[6:8]]
    opencti.publish_raw(connector.enrichment_connector_id, b"\x00 not json")
    # the first request delivered twice (as when OpenCTI retried a publish)
    queue_name = listen_queue(connector.enrichment_connector_id)
    opencti.publish_raw(connector.enrichment_connector_id, _peek(rabbitmq, queue_name))
    resources = {**job_resources(), "opencti": connector}

    result = drain_once(dagster_instance, resources, concurrency=1)

    order = answered_order(dagster_instance, result.run_id)
    assert sorted(order) == sorted(auto + clicks)  # each once
    assert set(order[:2]) == set(clicks), order  # the clicks first, though asked last
    for work_id in auto + clicks:
        work = opencti.wait_for_work(work_id, timeout=20)
        assert not work.in_error, work.summary()
    assert queued(rabbitmq, queue_name) == 0
    meta = metadata(result)
    assert meta["requests_total"] == 8
    assert meta["requests_refused"] == 1  # the malformed message
    assert meta["duplicate_messages"] == 1
    assert result.success
    calls = sum(
        sum(codes.values())
        for endpoint, codes in vt_emulator.stats().items()
        if "quota" not in endpoint
    )
    # every VT call but the budget's quota read is one of a request's (lookup, YARA ruleset)
    assert calls == sum(row.data["vt_calls"] for row in meta["requests"].records) >= 8


def test_a_redelivered_request_already_answered_is_not_answered_again(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    entities: list[str],
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
) -> None:
    connector_id = cti_resource.enrichment_connector_id
    work = opencti.ask_enrichment(entities[0], connector_id)
    body = _peek(rabbitmq, listen_queue(connector_id))
    first = drain_once(dagster_instance, job_resources())
    assert answered_order(dagster_instance, first.run_id) == [work]
    # The run died after OpenCTI took the answer and before its ack reached RabbitMQ: the
    # message comes back, redelivered.
    opencti.publish_raw(connector_id, body)
    make_redelivered(cti_resource, 1)
    vt_emulator.reset_stats()

    second = drain_once(dagster_instance, job_resources())

    assert answered_order(dagster_instance, second.run_id) == []
    assert metadata(second)["already_answered"] == 1
    assert set(vt_emulator.stats()) <= {"overall_quotas"}  # no lookup spent on it
    assert queued(rabbitmq, listen_queue(connector_id)) == 0
    assert opencti.work(work).status == "complete"


def test_a_request_that_two_runs_died_on_is_closed_in_error(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    entities: list[str],
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
) -> None:
    connector_id = cti_resource.enrichment_connector_id
    work = opencti.ask_enrichment(entities[1], connector_id)
    # An earlier drain run took it again after a first delivery and died without answering.
    dead = dagster_instance.create_run_for_job(
        job_def=vt_enrichment_drain_job, run_config=drain_run_config(DrainLimits())
    )
    dagster_instance.report_engine_event(
        "taken",
        dagster_run=dead,
        engine_event_data=EngineEventData(metadata={TAKEN_KEY: dg.MetadataValue.text(work)}),
    )
    dagster_instance.report_run_failed(dead)
    make_redelivered(cti_resource, 1)
    vt_emulator.reset_stats()

    result = drain_once(dagster_instance, job_resources())

    ended = opencti.wait_for_work(work, timeout=20)
    assert ended.in_error
    assert "2 enrichment runs ended while answering it" in str(ended.summary())
    assert metadata(result)["requests_abandoned"] == 1
    assert set(vt_emulator.stats()) <= {"overall_quotas"}  # no lookup
    assert queued(rabbitmq, listen_queue(connector_id)) == 0


def test_a_drain_run_killed_half_way_loses_nothing_and_answers_nothing_twice(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    vt_corpus: Corpus,
    cti_resource: OpenCTIResource,
    vt_emulator: VirusTotalEmulator,
    tmp_path: Path,
) -> None:
    connector_id = cti_resource.enrichment_connector_id
    domains = sorted(vt_corpus.domains)[:12]
    works = [
        opencti.ask_enrichment(opencti.create_observable("Domain-Name", d), connector_id)
        for d in domains
    ]
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VIRUSTOTAL_API_URL": vt_emulator.url,
        "VIRUSTOTAL_TOKEN": PREMIUM_KEY,
        "OPENCTI_URL": opencti.url,
        "OPENCTI_TOKEN": opencti.token,
        "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": connector_id,
        "VT_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
    }
    vt_emulator.set_latency(400)  # slow enough to kill it between two answers
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "2"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = instance.get_runs(filters=dg.RunsFilter(job_name=DRAIN_JOB))
                if runs and 2 <= len(answered_order(instance, runs[0].run_id)) < len(works):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the drain run never answered a first request")
            child.kill()  # SIGKILL: no clean-up, its channel dies with it
            child.wait(10)
            dead_run = runs[0].run_id
            before = answered_order(instance, dead_run)
            vt_emulator.set_latency(0)
            second = subprocess.run(
                [sys.executable, "-c", _CHILD, "2"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                timeout=120,
            )
            assert second.returncode == 0, second.stderr.decode()[-2000:]
            latest = instance.get_runs(filters=dg.RunsFilter(job_name=DRAIN_JOB))[0]
            after = answered_order(instance, latest.run_id)
    finally:
        if child.poll() is None:
            child.kill()
    assert sorted(before + after) == sorted(works), (before, after)  # each exactly once
    for work_id in works:
        assert not opencti.wait_for_work(work_id, timeout=20).in_error
    assert queued(rabbitmq, listen_queue(connector_id)) == 0


# A drain run as a deployment's run worker would execute it: the real job, the resources
# from the environment, the instance under $DAGSTER_HOME; ends when idle for argv[1] seconds.
_CHILD = """
import sys
import dagster as dg
from vt_pipeline.enrichment.drain import DrainLimits, drain_run_config, vt_enrichment_drain_job
from vt_pipeline.resources import build_resources
with dg.DagsterInstance.get() as instance:
    result = vt_enrichment_drain_job.execute_in_process(
        run_config=drain_run_config(DrainLimits(idle_seconds=float(sys.argv[1]), concurrency=2)),
        resources=build_resources(),
        instance=instance,
        raise_on_error=False,
    )
sys.exit(0 if result.success else 1)
"""


def _peek(rabbitmq: RabbitMQ, queue: str) -> bytes:
    """A message's body, left on the queue (read, then returned unacknowledged)."""
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        channel = connection.channel()
        method, _, body = channel.basic_get(queue, auto_ack=False)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
        return bytes(body)
    finally:
        connection.close()


# -- the drain sensor ----------------------------------------------------------------------


def tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resource: OpenCTIResource
) -> Any:
    context = dg.build_sensor_context(instance=instance, resources={"opencti": resource})
    return sensor.evaluate_tick(context)


def test_the_drain_sensor_keeps_exactly_one_drain_run_reading(
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    limits = DrainLimits(max_seconds=300, idle_seconds=0)
    sensor = build_drain_sensor(SensorSettings(mode=MODE_DRAIN, drain=limits))

    first = tick(sensor, dagster_instance, cti_resource)
    assert [r.job_name for r in first.run_requests] == [DRAIN_JOB]
    assert first.run_requests[0].run_config == drain_run_config(limits)

    # A drain run exists (queued): nothing more; it is reading: nothing more until near its end.
    running = threading.Thread(
        target=drain_once, args=(dagster_instance, job_resources()), kwargs={"idle_seconds": 3.0}
    )
    running.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records = dagster_instance.get_run_records(dg.RunsFilter(job_name=DRAIN_JOB))
            if records and records[0].start_time:
                break
            time.sleep(0.05)
        started = records[0].start_time
        assert "is reading the queue" in (
            tick(sensor, dagster_instance, cti_resource).skip_message or ""
        )
        # 70 s before its end it still reads; 50 s before, its successor is asked for
        assert drain_wait_reason(dagster_instance, limits, started + 300 - 70) is not None
        assert drain_wait_reason(dagster_instance, limits, started + 300 - 50) is None
    finally:
        running.join(30)


def test_failed_drain_runs_are_relaunched_with_a_back_off(
    dagster_instance: dg.DagsterInstance,
) -> None:
    limits = DrainLimits()
    for _ in range(3):
        run = dagster_instance.create_run_for_job(
            job_def=vt_enrichment_drain_job, run_config=drain_run_config(limits)
        )
        dagster_instance.report_run_failed(run)
    ended = dagster_instance.get_run_records(dg.RunsFilter(job_name=DRAIN_JOB))[0].end_time
    assert ended is not None
    reason = drain_wait_reason(dagster_instance, limits, ended + 5)
    assert reason is not None and "the last 3 drain run(s) failed" in reason
    assert drain_wait_reason(dagster_instance, limits, ended + 39) is not None  # 40 s for 3
    assert drain_wait_reason(dagster_instance, limits, ended + 41) is None


def test_an_idling_drain_is_started_again_only_when_a_request_waits(
    opencti: OpenCTIEmulator,
    cti_resource: OpenCTIResource,
    entities: list[str],
    dagster_instance: dg.DagsterInstance,
) -> None:
    settings = SensorSettings(mode=MODE_DRAIN, drain=DrainLimits(idle_seconds=30))
    sensor = build_drain_sensor(settings)
    idle = tick(sensor, dagster_instance, cti_resource)
    assert not idle.run_requests and "queue is empty" in (idle.skip_message or "")
    opencti.ask_enrichment(entities[0], cti_resource.enrichment_connector_id)
    assert [r.job_name for r in tick(sensor, dagster_instance, cti_resource).run_requests] == [
        DRAIN_JOB
    ]
    batch = build_drain_sensor(SensorSettings(mode=MODE_BATCH))
    assert "batch mode" in (tick(batch, dagster_instance, cti_resource).skip_message or "")


def test_drain_settings_from_the_environment_name_the_bad_variable() -> None:
    settings = SensorSettings.from_env(
        {
            "VT_PIPELINE_ENRICHMENT_MODE": "Drain",
            "VT_PIPELINE_ENRICHMENT_DRAIN_MAX_SECONDS": "600",
            "VT_PIPELINE_ENRICHMENT_DRAIN_IDLE_SECONDS": "120",
            "VT_PIPELINE_ENRICHMENT_CONCURRENCY": "4",
        }
    )
    assert settings.mode == MODE_DRAIN
    assert settings.drain == DrainLimits(max_seconds=600, idle_seconds=120, concurrency=4)
    assert SensorSettings.from_env({}).mode == MODE_DRAIN
    for name, value in (
        ("VT_PIPELINE_ENRICHMENT_MODE", "drian"),
        ("VT_PIPELINE_ENRICHMENT_DRAIN_IDLE_SECONDS", "5"),
        ("VT_PIPELINE_ENRICHMENT_DRAIN_MAX_SECONDS", "30"),
        ("VT_PIPELINE_ENRICHMENT_CONCURRENCY", "0"),
    ):
        with pytest.raises(ConfigError, match=f"{name}='{value}'"):
            SensorSettings.from_env({name: value})


def test_the_demo_driver_answers_through_a_drain_run(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    """`answer_enrichment_requests` (the demo's loop, drain mode by default outside the tests):
    the drain sensor's run answers the click; the enrichment sensor only settles."""
    from vt_pipeline.enrichment.summary import answer_enrichment_requests

    settings = SensorSettings(mode=MODE_DRAIN)
    sensors = (build_enrichment_sensor(settings), build_drain_sensor(settings))
    connector = own_connector(opencti)  # the broker outlives tests: a queue of its own
    entity = opencti.create_observable("Domain-Name", vt_corpus.targets().domain)
    work = opencti.ask_enrichment(entity, connector.enrichment_connector_id)
    results = answer_enrichment_requests(
        dagster_instance, {**job_resources(), "opencti": connector}, expected=1, sensors=sensors
    )
    assert [(r.job_def.name, r.success) for r in results] == [(DRAIN_JOB, True)]
    assert not opencti.wait_for_work(work, timeout=20).in_error


def test_a_broker_restart_ends_the_drain_run_and_the_next_one_answers_the_rest(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    works = [
        opencti.ask_enrichment(opencti.create_observable("Domain-Name", d), ENRICHMENT_CONNECTOR_ID)
        for d in sorted(vt_corpus.domains)[:8]
    ]
    vt_emulator.set_latency(500)
    results: list[dg.ExecuteInProcessResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            drain_once(dagster_instance, job_resources(), concurrency=2, idle_seconds=5.0)
        )
    )
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any((w := opencti.work(work)) and w.status == "complete" for work in works):
            break
        time.sleep(0.02)
    rabbitmq.restart(down_seconds=2)
    runner.join(120)
    first = results[0]
    assert not first.success  # it says why, and that the next run takes over
    failure = next(e for e in first.all_events if e.event_type_value == "STEP_FAILURE")
    assert "back in the queue" in str(failure.step_failure_data.error)
    vt_emulator.set_latency(0)
    second = drain_once(dagster_instance, job_resources())
    assert second.success
    answered = answered_order(dagster_instance, first.run_id) + answered_order(
        dagster_instance, second.run_id
    )
    assert sorted(answered) == sorted(works)  # each exactly once
    for work_id in works:
        assert not opencti.wait_for_work(work_id, timeout=20).in_error
    assert queued(rabbitmq, listen_queue(ENRICHMENT_CONNECTOR_ID)) == 0


def test_a_request_whose_work_opencti_no_longer_knows_is_dropped_the_rest_answered(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    entities: list[str],
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    """OpenCTI refusing (WORK_NOT_ALIVE: the work was deleted) is not OpenCTI being down: the
    message is dropped with the reason and the drain run goes on; it never comes back."""
    connector = own_connector(opencti)
    connector_id = connector.enrichment_connector_id
    gone = {
        "internal": {"work_id": "work_deleted_meanwhile", "applicant_id": None},
        "event": {"entity_id": entities[0], "entity_type": "StixFile"},
    }
    opencti.publish_raw(connector_id, json.dumps(gone).encode())
    work = opencti.ask_enrichment(entities[4], connector_id)

    result = drain_once(dagster_instance, {**job_resources(), "opencti": connector})

    assert answered_order(dagster_instance, result.run_id) == [work]
    assert not opencti.wait_for_work(work, timeout=20).in_error
    assert metadata(result)["requests_refused"] == 1
    assert queued(rabbitmq, listen_queue(connector_id)) == 0
