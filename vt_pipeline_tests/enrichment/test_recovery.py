"""Requests of enrichment runs that ended without answering them: answered again, never dropped.

The sensor (real RabbitMQ, the OpenCTI emulator, a real Dagster instance) watches the runs it
launched; the runs here are stand-ins with the real op's name and config that die the way a real
run dies (an exception before answering, or after answering some requests), so each test decides
what was answered. The end-to-end version through a real `dagster-daemon`, with SIGKILLed
processes, is `test_reliability_daemon.py`.
"""

import json
import uuid
from collections.abc import Sequence

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.enrichment import recovery
from vt_pipeline.enrichment.requests import ENRICHMENT_JOB, ENRICHMENT_OP, EnrichmentRequest
from vt_pipeline.enrichment.sensor import RUN_KEY_TAG, EnrichmentCursor
from vt_pipeline_tests.enrichment.test_sensor import Harness, run_ids

pytestmark = pytest.mark.integration


@dg.op(name=ENRICHMENT_OP, config_schema={"requests": [dg.Permissive()], "answer": int})
def dying_op(context: dg.OpExecutionContext) -> None:
    """Answers the first `answer` requests (closes their works, records them), then dies."""
    requests = [EnrichmentRequest.from_config(r) for r in context.op_config["requests"]]
    for request in requests[: context.op_config["answer"]]:
        OPENCTI[0].platform.work_edit(request.work_id)["toProcessed"](message="enriched")
        recovery.record_answered(
            context.instance, context.dagster_run, request.request_id, "enriched"
        )
    raise RuntimeError("the run's process died")


@dg.job(name=ENRICHMENT_JOB)
def dying_job() -> None:
    dying_op()


OPENCTI: list[OpenCTIEmulator] = []


@pytest.fixture
def harness(opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance) -> Harness:
    OPENCTI[:] = [opencti]
    return Harness(opencti, dagster_instance)


def die(harness: Harness, run_requests: Sequence[dg.RunRequest], answer: int = 0) -> list[str]:
    """Launch each run request as the daemon would, as a run that dies; their run ids."""
    ids = []
    for request in run_requests:
        if harness.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key})):
            continue
        config = request.run_config["ops"][ENRICHMENT_OP]["config"]
        result = dying_job.execute_in_process(
            run_config={"ops": {ENRICHMENT_OP: {"config": {**config, "answer": answer}}}},
            instance=harness.instance,
            tags={**request.tags, RUN_KEY_TAG: request.run_key},
            raise_on_error=False,
        )
        assert not result.success
        ids.append(result.run_id)
    return ids


def carried(run_request: dg.RunRequest) -> list[EnrichmentRequest]:
    configs = run_request.run_config["ops"][ENRICHMENT_OP]["config"]["requests"]
    return [EnrichmentRequest.from_config(c) for c in configs]


def publish_request(harness: Harness, work_id: str, entity_type: str) -> None:
    """An enrichment request for an entity of `entity_type` on `work_id`, as OpenCTI sends it."""
    message = {
        "internal": {"work_id": work_id},
        "event": {"entity_id": "x--1", "entity_type": entity_type},
    }
    harness.opencti.publish_raw(harness.connector_id, json.dumps(message).encode())


def work_state(harness: Harness, work_id: str) -> tuple[str, list[str], list[str]]:
    work = harness.opencti.work(work_id)
    assert work is not None
    summary = work.summary()
    return summary["status"], summary["messages"], summary["errors"]


def test_a_dead_run_is_run_again_once_then_its_works_end_in_error(harness: Harness) -> None:
    works = harness.ask(3)
    first = harness.tick()
    [dead] = die(harness, first.run_requests)
    second = harness.tick()  # acknowledges (the run exists) and sees that it died
    assert harness.queued() == 0
    [retry] = second.run_requests
    assert retry.run_key == recovery.retry_key(dead)
    assert run_ids([retry]) == [works]
    assert retry.tags[recovery.ATTEMPT_TAG] == "2" and retry.tags[recovery.RETRY_OF_TAG] == dead
    assert retry.tags["vt_pipeline/kind"] == "interactive"
    # The request time the sensor stamped is carried over: the same request, the same objects.
    stamped = [r.requested_time for r in carried(first.run_requests[0])]
    assert all(stamped) and [r.requested_time for r in carried(retry)] == stamped
    assert all(work_state(harness, w)[0] != "complete" for w in works)

    [dead_again] = die(harness, [retry])
    third = harness.tick()
    assert third.run_requests == []  # tried twice: not a third time
    for work_id in works:
        status, _, errors = work_state(harness, work_id)
        assert status == "complete", (status, errors)
        assert len(errors) == 1 and "2 enrichment runs ended before answering it" in errors[0]
        assert dead_again in errors[0] and "the run's process died" in errors[0]
    first_run = harness.instance.get_run_by_id(dead)
    last_run = harness.instance.get_run_by_id(dead_again)
    assert first_run is not None and last_run is not None
    assert "sent again in run" in first_run.tags[recovery.OUTCOME_TAG]
    assert "closed in error" in last_run.tags[recovery.OUTCOME_TAG]
    assert EnrichmentCursor.parse(harness.cursor).running == {}
    assert harness.tick().run_requests == [] and harness.queued() == 0
    assert harness.requests_run() == dict.fromkeys(works, 2)


def test_only_what_the_dead_run_did_not_answer_is_run_again(harness: Harness) -> None:
    works = harness.ask(4)
    first = harness.tick()
    die(harness, first.run_requests, answer=2)
    [retry] = harness.tick().run_requests
    assert run_ids([retry]) == [works[2:]]
    assert [work_state(harness, w)[1] for w in works[:2]] == [["enriched"], ["enriched"]]


def test_a_work_opencti_completed_counts_as_answered(harness: Harness) -> None:
    """The run died between the answer and its record: the work says it was answered."""
    works = harness.ask(2)
    first = harness.tick()
    harness.opencti.platform.work_edit(works[0])["toProcessed"](message="enriched")
    die(harness, first.run_requests)
    [retry] = harness.tick().run_requests
    assert run_ids([retry]) == [works[1:]]


def test_a_retry_is_asked_for_until_its_run_exists(harness: Harness) -> None:
    """A crash between the tick that asked for the retry and the daemon creating it."""
    works = harness.ask(2)
    die(harness, harness.tick().run_requests)
    [retry] = harness.tick().run_requests
    [again] = harness.tick().run_requests  # the run was never created: asked again, same key
    assert again.run_key == retry.run_key and run_ids([again]) == run_ids([retry])
    [retry_run] = die(harness, [retry], answer=2)
    assert die(harness, [again]) == []  # same run key: the daemon creates no second run
    assert harness.tick().run_requests == []
    assert EnrichmentCursor.parse(harness.cursor).running == {}
    assert harness.requests_run() == dict.fromkeys(works, 2)
    run = harness.instance.get_run_by_id(retry_run)
    assert run is not None and run.tags[recovery.OUTCOME_TAG] == "every request was answered"


def test_an_unreachable_opencti_delays_the_recovery_and_loses_nothing(harness: Harness) -> None:
    works = harness.ask(2)
    die(harness, harness.tick().run_requests)
    [retry] = harness.tick().run_requests
    die(harness, [retry])
    harness.opencti.set_outage("refuse")
    with pytest.raises(Exception, match="OpenCTI"):
        harness.tick()  # the tick fails: its cursor is not saved, the runs stay watched
    harness.opencti.clear_outage()
    assert harness.tick().run_requests == []
    assert all(work_state(harness, w)[0] == "complete" for w in works)
    assert EnrichmentCursor.parse(harness.cursor).running == {}


def test_a_message_naming_a_work_opencti_no_longer_knows_leaves_the_queue(
    harness: Harness,
) -> None:
    """A poison message: OpenCTI refuses the report (unknown work); it is acknowledged."""
    publish_request(harness, f"work_{uuid.uuid4()}", "Malware")
    tick = harness.tick()
    assert tick.run_requests == [] and "1 refused" in (tick.skip or "")
    assert harness.queued() == 0


def test_control_characters_in_a_request_reach_opencti_escaped(harness: Harness) -> None:
    work = harness.opencti.platform.create_work(harness.connector_id, "hostile").id
    publish_request(harness, work, "Evil\x00\x1b[2J\x9bType")
    harness.tick()
    [error] = work_state(harness, work)[2]
    assert "Evil\\x00\\x1b[2J\\x9bType" in error
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in error)


def test_a_dead_runs_work_opencti_no_longer_knows_does_not_hold_the_others(
    harness: Harness,
) -> None:
    """A work deleted in OpenCTI meanwhile: its request is dropped with a log line; the others
    of the dead run are still run again."""
    works = harness.ask(3)
    die(harness, harness.tick().run_requests)
    harness.opencti.platform.works.pop(works[0])
    [retry] = harness.tick().run_requests
    assert run_ids([retry]) == [works]  # unknown to OpenCTI: not known to be answered
    die(harness, [retry])
    assert harness.tick().run_requests == []
    assert EnrichmentCursor.parse(harness.cursor).running == {}
    assert [work_state(harness, w)[0] for w in works[1:]] == ["complete", "complete"]


def test_an_operators_re_execution_of_a_dead_run_is_its_retry(harness: Harness) -> None:
    """Re-executed from the UI before the sensor got to it: no second retry run."""
    works = harness.ask(2)
    [dead] = die(harness, harness.tick().run_requests)
    run = harness.instance.get_run_by_id(dead)
    assert run is not None
    config = run.run_config["ops"][ENRICHMENT_OP]["config"]
    reexecution = dying_job.execute_in_process(
        run_config={"ops": {ENRICHMENT_OP: {"config": {**config, "answer": 2}}}},
        instance=harness.instance,
        tags={"dagster/parent_run_id": dead, "dagster/root_run_id": dead},
        raise_on_error=False,
    )
    assert harness.tick().run_requests == []
    assert EnrichmentCursor.parse(harness.cursor).running == {}
    assert all(work_state(harness, w)[0] == "complete" for w in works)
    tags = harness.instance.get_run_by_id(dead).tags  # type: ignore[union-attr]
    assert reexecution.run_id in tags[recovery.OUTCOME_TAG]
