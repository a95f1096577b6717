"""The enrichment sensor against a real RabbitMQ, the OpenCTI emulator and a real Dagster instance.

Ticks are evaluated with `build_sensor_context`; the daemon's part (create a run per run
request unless its run key already has one) is done by `launch`, with a stand-in job whose
op has the real job's name and config, so each test can crash the daemon where it wants.
"""

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pika
import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.enrichment.requests import ENRICHMENT_JOB, ENRICHMENT_OP, EnrichmentRequest
from vt_pipeline.enrichment.sensor import (
    MODE_BATCH,
    RUN_KEY_TAG,
    TAG_KIND,
    TAG_REQUESTS,
    EnrichmentCursor,
    SensorSettings,
    build_enrichment_sensor,
    requests_in_run,
)
from vt_pipeline.opencti.listen_queue import ListenQueue
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource


@dg.op(name=ENRICHMENT_OP, config_schema={"requests": [dg.Permissive()]})
def record_requests(context: dg.OpExecutionContext) -> None:
    """Stands in for the real op: the requests are in the run's config."""
    for raw in context.op_config["requests"]:
        EnrichmentRequest.from_config(raw)


@dg.job(name=ENRICHMENT_JOB)
def record_job() -> None:
    record_requests()


@dataclass
class Tick:
    run_requests: list[dg.RunRequest]
    cursor: str | None
    skip: str | None
    seconds: float


class Harness:
    """One enrichment connector (fresh id: the broker outlives a test) and its sensor."""

    def __init__(
        self,
        opencti: OpenCTIEmulator,
        instance: dg.DagsterInstance,
        settings: SensorSettings | None = None,
        **resource: Any,
    ) -> None:
        self.opencti = opencti
        self.instance = instance
        self.resource = OpenCTIResource(
            url=opencti.url,
            token=opencti.token,
            enrichment_connector_id=str(uuid.uuid4()),
            **resource,
        )
        self.sensor = build_enrichment_sensor(
            settings or SensorSettings(mode=MODE_BATCH, tick_seconds=10)
        )
        self.cursor: str | None = None
        with self.resource.connector("enrichment"):  # registration creates the queue
            pass

    @property
    def connector_id(self) -> str:
        return self.resource.enrichment_connector_id

    def tick(self, save: bool = True, settings: SensorSettings | None = None) -> Tick:
        """Evaluate one tick from the saved cursor (other settings: another sensor build)."""
        sensor = self.sensor if settings is None else build_enrichment_sensor(settings)
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"opencti": self.resource},
            definitions=dg.Definitions(jobs=[record_job], sensors=[sensor]),
        )
        started = time.monotonic()
        data = sensor.evaluate_tick(context)
        tick = Tick(
            list(data.run_requests or []),
            data.cursor,
            data.skip_message,
            time.monotonic() - started,
        )
        if save:
            self.cursor = tick.cursor
        return tick

    def launch(self, run_requests: Sequence[dg.RunRequest]) -> int:
        """What the daemon does: one run per run key, never a second; returns runs created."""
        created = 0
        for request in run_requests:
            existing = self.instance.get_runs(
                filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key})
            )
            if existing:
                continue
            result = record_job.execute_in_process(
                run_config=request.run_config,
                instance=self.instance,
                tags={**request.tags, RUN_KEY_TAG: request.run_key},
            )
            assert result.success
            created += 1
        return created

    def publish(self, messages: Iterable[dict[str, Any]]) -> None:
        """Many messages on the listen queue, over one channel (as OpenCTI does)."""
        with self.resource.connector("enrichment") as cti:
            config = cti.helper.connector_config
        assert self.opencti.amqp is not None
        connection = pika.BlockingConnection(self.opencti.amqp.connection_parameters())
        try:
            channel = connection.channel()
            for message in messages:
                channel.basic_publish(
                    config["listen_exchange"],
                    config["listen_routing"],
                    json.dumps(message).encode(),
                    pika.BasicProperties(delivery_mode=2),
                )
        finally:
            connection.close()

    def requests_run(self) -> Counter[str]:
        """How many runs carry each request id."""
        counts: Counter[str] = Counter()
        for run in self.instance.get_runs():
            counts.update(requests_in_run(run))
        return counts

    def queued(self) -> int:
        """Messages still in the listen queue (none held by anyone)."""
        with self.resource.connector("enrichment") as cti, ListenQueue.of(cti) as queue:
            return len(queue.read(100_000, 30))

    def ask(self, count: int, entity_type: str = "Domain-Name") -> list[str]:
        """`count` analyst clicks on fresh entities; their work ids, in order."""
        works = []
        for _ in range(count):
            value = f"{uuid.uuid4().hex[:12]}.example.org"
            if entity_type == "IPv4-Addr":
                value = f"10.{len(works) % 250}.{uuid.uuid4().int % 250}.{len(works) // 250 + 1}"
            entity = self.opencti.create_observable(entity_type, value)
            works.append(self.opencti.ask_enrichment(entity, self.connector_id))
        return works


@pytest.fixture
def harness(opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance) -> Harness:
    return Harness(opencti, dagster_instance)


def run_ids(run_requests: Sequence[dg.RunRequest]) -> list[list[str]]:
    return [
        [r["request_id"] for r in rr.run_config["ops"][ENRICHMENT_OP]["config"]["requests"]]
        for rr in run_requests
    ]


pytestmark = pytest.mark.integration


def test_one_request_one_run_acknowledged_once_the_run_exists(harness: Harness) -> None:
    [work] = harness.ask(1)
    first = harness.tick()
    assert run_ids(first.run_requests) == [[work]]
    [request] = first.run_requests
    assert request.tags[TAG_KIND] == "interactive" and request.tags[TAG_REQUESTS] == "1"
    assert harness.queued() == 1  # not acknowledged: its run does not exist yet
    assert harness.launch(first.run_requests) == 1
    second = harness.tick()
    assert second.run_requests == [] and "1 acknowledged" in (second.skip or "")
    assert harness.queued() == 0
    assert harness.requests_run() == {work: 1}
    assert harness.tick().run_requests == []


def test_a_request_delivered_twice_gives_one_run(harness: Harness) -> None:
    [work] = harness.ask(1)
    with harness.resource.connector("enrichment") as cti, ListenQueue.of(cti) as queue:
        [message] = queue.read(10, 5)  # put back on close: the original stays queued
    harness.opencti.publish_raw(harness.connector_id, message.body)  # same request, again
    first = harness.tick()
    assert run_ids(first.run_requests) == [[work]]
    harness.launch(first.run_requests)
    harness.tick()
    assert harness.queued() == 0
    harness.opencti.publish_raw(harness.connector_id, message.body)  # a late duplicate
    late = harness.tick()
    assert late.run_requests == [] and harness.queued() == 0
    assert harness.requests_run() == {work: 1}


def test_a_crash_between_run_creation_and_acknowledgement(harness: Harness) -> None:
    works = harness.ask(3)
    first = harness.tick()
    harness.launch(first.run_requests)
    # The tick that would acknowledge crashes (OpenCTI unreachable): its cursor is lost.
    harness.opencti.set_outage("refuse")
    with pytest.raises(OpenCTIError, match="OpenCTI"):
        harness.tick()
    harness.opencti.clear_outage()
    assert harness.queued() == 3  # nothing lost
    again = harness.tick()
    assert again.run_requests == []  # nothing doubled
    assert harness.queued() == 0
    # The daemon resuming the first tick re-submits its run requests: run keys stop them.
    assert harness.launch(first.run_requests) == 0
    assert harness.requests_run() == dict.fromkeys(works, 1)


def test_a_crash_after_the_cursor_was_saved_before_the_runs_were_launched(
    harness: Harness,
) -> None:
    works = harness.ask(5)
    first = harness.tick()  # cursor saved, runs never created
    second = harness.tick()
    assert [r.run_key for r in second.run_requests] == [r.run_key for r in first.run_requests]
    assert run_ids(second.run_requests) == run_ids(first.run_requests)
    harness.launch(first.run_requests)  # the resumed tick
    harness.launch(second.run_requests)  # and the new one: same keys, no second run
    harness.tick()
    assert harness.queued() == 0
    assert harness.requests_run() == dict.fromkeys(works, 1)


def test_a_run_created_with_part_of_its_requests_loses_none(harness: Harness) -> None:
    works = harness.ask(5)
    first = harness.tick()
    assert run_ids(first.run_requests) == [works]
    # Before its run exists, a tick that reads only 3 of the 5 re-requests the same key.
    subset = harness.tick(settings=SensorSettings(mode=MODE_BATCH, tick_seconds=10, max_messages=3))
    assert run_ids(subset.run_requests) == [works[:3]]
    assert subset.run_requests[0].run_key == first.run_requests[0].run_key
    harness.launch(subset.run_requests)  # the run exists, with 3 of the 5
    rest = harness.tick()
    assert run_ids(rest.run_requests) == [works[3:]]  # the other two, under a new key
    assert rest.run_requests[0].run_key != first.run_requests[0].run_key
    harness.launch(first.run_requests)  # a late daemon resume: the key exists, nothing more
    harness.launch(rest.run_requests)
    harness.tick()
    assert harness.queued() == 0
    assert harness.requests_run() == dict.fromkeys(works, 1)


def test_a_burst_is_batched(opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance) -> None:
    harness = Harness(
        opencti, dagster_instance, SensorSettings(mode=MODE_BATCH, tick_seconds=20, batch_size=20)
    )
    works = harness.ask(45)
    first = harness.tick()
    assert run_ids(first.run_requests) == [works[:20], works[20:40], works[40:]]
    assert [r.tags[TAG_REQUESTS] for r in first.run_requests] == ["20", "20", "5"]
    assert harness.launch(first.run_requests) == 3
    harness.tick()
    assert harness.queued() == 0
    assert harness.requests_run() == dict.fromkeys(works, 1)


def test_bad_requests_end_their_work_in_error_and_leave_the_queue(
    opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance
) -> None:
    harness = Harness(
        opencti, dagster_instance, enrichment_connector_scope="StixFile,IPv4-Addr,Domain-Name"
    )
    platform = opencti.platform
    malformed = platform.create_work(harness.connector_id, "malformed").id
    opencti.publish_raw(
        harness.connector_id,
        json.dumps({"internal": {"work_id": malformed}, "event": {"entity_type": "Url"}}).encode(),
    )
    opencti.publish_raw(harness.connector_id, b"\x00 not json at all")
    unknown = platform.create_work(harness.connector_id, "unknown type").id
    opencti.publish_raw(
        harness.connector_id,
        json.dumps(
            {
                "internal": {"work_id": unknown, "applicant_id": None},
                "event": {"entity_id": "malware--1", "entity_type": "Malware"},
            }
        ).encode(),
    )
    url = opencti.create_observable("Url", "https://example.org/a")
    out_of_scope = opencti.ask_enrichment(url, harness.connector_id)
    [good] = harness.ask(1)
    tick = harness.tick()
    assert run_ids(tick.run_requests) == [[good]]
    assert harness.queued() == 1  # only the good one, until its run exists
    errors = {
        work_id: opencti.work(work_id).errors  # type: ignore[union-attr]
        for work_id in (malformed, unknown, out_of_scope)
    }
    assert "malformed enrichment request" in errors[malformed][0]["message"]
    assert "event.entity_id" in errors[malformed][0]["message"]
    assert "cannot enrich a Malware" in errors[unknown][0]["message"]
    assert "Url is outside this connector's scope" in errors[out_of_scope][0]["message"]
    assert all(opencti.work(w).in_error for w in errors)  # type: ignore[union-attr]
    assert not opencti.work(good).in_error  # type: ignore[union-attr]


def test_auto_enrichment_respects_connector_auto(
    opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance
) -> None:
    off = Harness(opencti, dagster_instance)
    entity = opencti.create_observable("Domain-Name", "auto-off.example.org")
    work = opencti.platform.ask_enrichment(entity, off.connector_id, mode="auto").id
    assert off.tick().run_requests == []
    assert "CONNECTOR_AUTO=false" in opencti.work(work).errors[0]["message"]  # type: ignore[union-attr]
    on = Harness(opencti, dagster_instance, connector_auto=True)
    assert opencti.connectors[on.connector_id]["auto"] is True
    created = opencti.create_observable("Domain-Name", "auto-on.example.org")  # auto-enriched
    tick = on.tick()
    assert [r.tags[TAG_KIND] for r in tick.run_requests] == ["auto"]
    [[request]] = [
        rr.run_config["ops"][ENRICHMENT_OP]["config"]["requests"] for rr in tick.run_requests
    ]
    assert request["entity_id"] == created


def test_playbook_requests_run_or_pass_their_bundle_through(
    opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance
) -> None:
    harness = Harness(opencti, dagster_instance, enrichment_connector_scope="StixFile,Domain-Name")
    domain = opencti.create_observable("Domain-Name", "playbook.example.org")
    in_scope = opencti.ask_playbook_enrichment(domain, harness.connector_id)
    url = opencti.create_observable("Url", "https://playbook.example.org/x")
    out_of_scope = opencti.ask_playbook_enrichment(url, harness.connector_id)
    tick = harness.tick()
    [request] = tick.run_requests
    assert request.tags[TAG_KIND] == "playbook"
    [[carried]] = run_ids(tick.run_requests)
    assert carried.startswith(f"playbook:{in_scope}:")
    [step] = opencti.playbook_steps(out_of_scope)
    assert step.bundle == step.previous_bundle  # unchanged
    assert [o["id"] for o in step.bundle["objects"]][-1] == url
    assert opencti.playbook_steps(in_scope) == []
    assert harness.queued() == 1


def test_a_tick_keeps_to_its_budget(
    opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance
) -> None:
    harness = Harness(
        opencti,
        dagster_instance,
        SensorSettings(mode=MODE_BATCH, tick_seconds=2),
        enrichment_connector_scope="StixFile",
    )
    platform = opencti.platform
    works = [platform.create_work(harness.connector_id, f"w{i}").id for i in range(2500)]
    harness.publish(  # out of scope: each costs an OpenCTI call to report
        {"internal": {"work_id": work}, "event": {"entity_id": f"url--{i}", "entity_type": "Url"}}
        for i, work in enumerate(works)
    )
    ticks = []
    for _ in range(40):
        ticks.append(harness.tick())
        if all(opencti.work(w).in_error for w in works):  # type: ignore[union-attr]
            break
    assert len(ticks) > 1  # more than one tick's worth of work...
    assert max(t.seconds for t in ticks) < 2.5  # ...and no tick over its budget
    assert all(opencti.work(w).in_error for w in works)  # type: ignore[union-attr]
    assert harness.queued() == 0


def test_without_opencti_the_sensor_says_why(dagster_instance: dg.DagsterInstance) -> None:
    sensor = build_enrichment_sensor(SensorSettings(mode=MODE_BATCH))
    context = dg.build_sensor_context(
        instance=dagster_instance,
        resources={"opencti": OpenCTIResource()},
        definitions=dg.Definitions(jobs=[record_job], sensors=[sensor]),
    )
    data = sensor.evaluate_tick(context)
    assert not data.run_requests
    assert "OPENCTI_URL" in (data.skip_message or "")


def test_settings_from_the_environment_name_the_bad_variable() -> None:
    assert SensorSettings.from_env({}) == SensorSettings(tick_seconds=20, batch_size=20)
    assert SensorSettings.from_env(
        {"VT_PIPELINE_ENRICHMENT_TICK_SECONDS": "8", "VT_PIPELINE_ENRICHMENT_BATCH_SIZE": "50"}
    ) == SensorSettings(tick_seconds=8, batch_size=50)
    with pytest.raises(ConfigError, match="VT_PIPELINE_ENRICHMENT_TICK_SECONDS='90'"):
        SensorSettings.from_env({"VT_PIPELINE_ENRICHMENT_TICK_SECONDS": "90"})
    with pytest.raises(ConfigError, match="VT_PIPELINE_ENRICHMENT_BATCH_SIZE='many'"):
        SensorSettings.from_env({"VT_PIPELINE_ENRICHMENT_BATCH_SIZE": "many"})


def test_the_done_memory_is_bounded() -> None:
    cursor = EnrichmentCursor()
    cursor.finish([str(i) for i in range(50)], memory=20)
    cursor.finish(["49", "50"], memory=20)
    assert cursor.done == [str(i) for i in range(31, 51)]
    assert EnrichmentCursor.parse("not json").done == []


def test_pending_keys_whose_messages_are_gone_are_forgotten_after_days() -> None:
    cursor = EnrichmentCursor()
    cursor.request("k-old", ["a"], now=1_000.0)
    cursor.request("k-fresh", ["b"], now=1_000.0 + 3 * 24 * 3600)
    cursor.request("k-requested", ["c"], now=1_000.0)
    cursor.forget_stale({"k-requested"}, now=1_001.0 + 3 * 24 * 3600)
    assert set(cursor.pending) == {"k-fresh", "k-requested"}
    assert EnrichmentCursor.parse(cursor.to_json()) == cursor


def test_the_sensor_is_evaluated_on_every_daemon_loop() -> None:
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    sensor = build_enrichment_sensor(SensorSettings(mode=MODE_BATCH))
    assert sensor.job_name == ENRICHMENT_JOB
    assert sensor.minimum_interval_seconds is not None
    assert sensor.minimum_interval_seconds < MIN_INTERVAL_LOOP_TIME


def test_default_status_follows_whether_opencti_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENCTI_URL", raising=False)
    stopped = build_enrichment_sensor(SensorSettings(mode=MODE_BATCH))
    assert stopped.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv("OPENCTI_URL", "http://opencti:8080")
    running = build_enrichment_sensor(SensorSettings(mode=MODE_BATCH))
    assert running.default_status == dg.DefaultSensorStatus.RUNNING


def test_an_unreachable_opencti_fails_the_tick_within_its_budget(harness: Harness) -> None:
    """Registration waits out a down OpenCTI only while the tick has time: the daemon's 60 s
    limit must never be the one that ends a tick (the resource alone would retry ~90 s)."""
    harness.ask(1)
    harness.opencti.set_outage("refuse")
    started = time.monotonic()
    try:
        with pytest.raises(OpenCTIError, match="not reachable"):
            harness.tick(settings=SensorSettings(mode=MODE_BATCH, tick_seconds=3))
    finally:
        harness.opencti.clear_outage()
    assert time.monotonic() - started < 6
    assert harness.queued() == 1  # nothing acknowledged, nothing lost
