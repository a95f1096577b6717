"""The OpenCTI emulator against the real pycti (API client and connector helper), over a real
RabbitMQ: what the pipeline's delivery and enrichment code will rely on."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pytest
import requests
from pycti import (
    Identity,
    Incident,
    Indicator,
    Note,
    OpenCTIApiClient,
    StixCoreRelationship,
)
from pycti import __version__ as pycti_version

from vt_pipeline.emulators.opencti import server as opencti_module
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ

pytestmark = pytest.mark.integration

T0 = "2024-05-01T10:00:00.000Z"
TLP_GREEN = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
TLP_AMBER = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
AUTHOR_ID = Identity.generate_id("VT test author", "organization")
AUTHOR = {
    "type": "identity",
    "spec_version": "2.1",
    "id": AUTHOR_ID,
    "name": "VT test author",
    "identity_class": "organization",
    "created": T0,
    "modified": T0,
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stix_file(digest: str, **extra: Any) -> dict[str, Any]:
    obj = {
        "type": "file",
        "spec_version": "2.1",
        "id": f"file--{uuid.uuid5(uuid.NAMESPACE_OID, digest)}",
        "hashes": {"SHA-256": digest},
        "name": "sample.exe",
        "object_marking_refs": [TLP_GREEN],
        "x_opencti_created_by_ref": AUTHOR_ID,
    }
    obj.update(extra)
    return obj


def bundle(*objects: dict[str, Any]) -> str:
    return json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects})


def livehunt_like_bundle(digest: str) -> tuple[str, dict[str, str]]:
    """Author, File, YARA Indicator, Incident and relationships, as the Livehunt flow sends."""
    file = stix_file(digest, x_opencti_score=80, x_opencti_labels=["vt:lh:rule"])
    pattern = f"rule r_{digest[:8]} {{ condition: true }}"
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": Indicator.generate_id(pattern),
        "created": T0,
        "modified": T0,
        "name": f"r_{digest[:8]}",
        "pattern": pattern,
        "pattern_type": "yara",
        "valid_from": T0,
        "created_by_ref": AUTHOR_ID,
        "object_marking_refs": [TLP_GREEN],
        "x_opencti_main_observable_type": "StixFile",
    }
    incident_name = f"VT r_{digest[:8]} file={digest}"
    incident = {
        "type": "incident",
        "spec_version": "2.1",
        "id": Incident.generate_id(incident_name, T0),
        "created": T0,
        "modified": T0,
        "name": incident_name,
        "incident_type": "alert",
        "source": "hunting_notification",
        "labels": ["vt:lh:rule"],
        "created_by_ref": AUTHOR_ID,
        "object_marking_refs": [TLP_GREEN],
    }
    relations = [
        {
            "type": "relationship",
            "spec_version": "2.1",
            "id": StixCoreRelationship.generate_id(rel_type, src, dst),
            "created": T0,
            "modified": T0,
            "relationship_type": rel_type,
            "source_ref": src,
            "target_ref": dst,
            "created_by_ref": AUTHOR_ID,
        }
        for rel_type, src, dst in (
            ("related-to", incident["id"], file["id"]),
            ("based-on", indicator["id"], file["id"]),
        )
    ]
    ids = {"file": file["id"], "indicator": indicator["id"], "incident": incident["id"]}
    return bundle(AUTHOR, file, indicator, incident, *relations), ids


def api_client(emulator: OpenCTIEmulator) -> OpenCTIApiClient:
    return emulator.api_client()


def by_hash_filter(digest: str) -> dict[str, Any]:
    """The filter upstream's `artifact_exists_opencti` sends."""
    return {
        "mode": "and",
        "filters": [{"key": "hashes.SHA-256", "values": [digest]}],
        "filterGroups": [],
    }


# -- start-up and authentication --------------------------------------------------------------
def test_pycti_api_client_starts_against_the_emulator(opencti: OpenCTIEmulator) -> None:
    api = api_client(opencti)
    assert api.health_check()
    assert api.query("query { about { version } }")["data"]["about"]["version"] == pycti_version


def test_a_wrong_token_fails_clearly(opencti: OpenCTIEmulator) -> None:
    # pycti turns the failed health check into its own "not reachable" message...
    with pytest.raises(ValueError, match="not reachable"):
        OpenCTIApiClient(opencti.url, "not-the-token", log_level="critical")
    # ...and any query into OpenCTI's AUTH_REQUIRED error.
    client = OpenCTIApiClient(
        opencti.url, "not-the-token", log_level="critical", perform_health_check=False
    )
    with pytest.raises(ValueError, match="AUTH_REQUIRED"):
        client.query("query { about { version } }")
    assert requests.get(f"{opencti.url}/storage/get/import/x", timeout=5).status_code == 401


# -- connectors -------------------------------------------------------------------------------
@pytest.mark.parametrize("connector_type", ["EXTERNAL_IMPORT", "INTERNAL_ENRICHMENT"])
def test_registration_hands_out_the_real_rabbitmq_and_declares_the_queues(
    connector_helper: Callable[..., Any],
    rabbitmq: RabbitMQ,
    opencti: OpenCTIEmulator,
    connector_type: str,
) -> None:
    helper = connector_helper(connector_type)
    config = helper.connector_config
    assert config["connection"] == {
        "host": rabbitmq.host,
        "vhost": "/",
        "use_ssl": False,
        "port": rabbitmq.port,
        "user": "guest",
        "pass": "guest",
    }
    assert config["listen"] == f"listen_{helper.connect_id}"
    assert config["push"] == f"push_{helper.connect_id}"
    assert opencti.connectors[helper.connect_id]["type"] == connector_type

    # The bindings route like the platform's: a message to the listen exchange with the
    # listen routing key lands in the listen queue.
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        channel = connection.channel()
        for name in (config["listen"], config["push"]):
            channel.queue_declare(name, passive=True)
        channel.basic_publish(config["listen_exchange"], config["listen_routing"], b"{}")
        method, _, body = channel.basic_get(config["listen"], auto_ack=True)
        assert method is not None and body == b"{}"
    finally:
        connection.close()


def test_a_new_platform_ignores_what_an_earlier_one_left_in_the_shared_broker(
    rabbitmq: RabbitMQ,
) -> None:
    """The broker outlives an emulator: a bundle or a request left in a connector's queues by
    an earlier platform names works this one never had. A platform that has never seen the
    connector empties its queues when it registers, as a fresh OpenCTI has none; registering
    again later empties nothing."""
    from vt_pipeline.emulators.opencti.amqp import declare_connector_queues

    connector_id = str(uuid.uuid4())
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": []}
    stale = {"content": base64.b64encode(json.dumps(bundle).encode()).decode()}
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        channel = connection.channel()
        declare_connector_queues(channel, connector_id)
        channel.basic_publish("", f"push_{connector_id}", json.dumps(stale).encode())
        channel.basic_publish("", f"listen_{connector_id}", b'{"internal": {}}')
        with OpenCTIEmulator(amqp=rabbitmq) as opencti:
            opencti.platform.register_connector({"id": connector_id, "name": "x"})
            for name in ("listen", "push"):
                left = channel.queue_declare(f"{name}_{connector_id}", passive=True)
                assert left.method.message_count == 0, name
            channel.basic_publish("", f"listen_{connector_id}", b'{"internal": {}}')
            opencti.platform.register_connector({"id": connector_id, "name": "x"})
            kept = channel.queue_declare(f"listen_{connector_id}", passive=True)
            assert kept.method.message_count == 1  # its own request stays
    finally:
        connection.close()


def test_connector_state_is_kept_by_pings_and_given_back_at_registration(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator
) -> None:
    # run_and_terminate: no background PingAlive racing our ping with the initial state.
    helper = connector_helper("EXTERNAL_IMPORT", run_and_terminate=True)
    helper.set_state({"last_run": 1714557600})
    helper.force_ping()
    assert json.loads(opencti.connectors[helper.connect_id]["state"]) == {"last_run": 1714557600}
    again = connector_helper("EXTERNAL_IMPORT", id=helper.connect_id, run_and_terminate=True)
    assert again.get_state() == {"last_run": 1714557600}


# -- bundles ----------------------------------------------------------------------------------
@pytest.mark.parametrize("queue_protocol", ["amqp", "api"])
def test_sent_bundles_land_in_the_store_once(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator, queue_protocol: str
) -> None:
    helper = connector_helper("EXTERNAL_IMPORT", queue_protocol)
    payload, ids = livehunt_like_bundle(sha256(queue_protocol.encode()))
    work_id = helper.api.work.initiate_work(helper.connect_id, "Livehunt window")
    helper.send_stix2_bundle(payload, work_id=work_id)
    helper.send_stix2_bundle(payload, work_id=work_id)  # a re-run upserts, never duplicates
    helper.api.work.to_processed(work_id, "2 notifications")

    work = opencti.wait_for_work(work_id, timeout=15)  # AMQP: the worker ingests async
    assert work.expected == work.processed == 12  # 6 objects, twice
    assert helper.api.work.get_work(work_id)["status"] == "complete"
    counts = opencti.counts()
    assert counts["StixFile"] == counts["Indicator"] == counts["Incident"] == 1
    assert counts["related-to"] == counts["based-on"] == counts["Organization"] == 1

    # Read back with pycti's own entity classes, the way the pipeline will.
    api = helper.api
    incident = api.incident.read(id=ids["incident"])
    assert incident["standard_id"] == ids["incident"]
    assert incident["createdBy"]["name"] == "VT test author"
    assert [m["definition"] for m in incident["objectMarking"]] == ["TLP:GREEN"]
    assert [label["value"] for label in incident["objectLabel"]] == ["vt:lh:rule"]
    indicator = api.indicator.read(id=ids["indicator"])
    assert indicator["pattern_type"] == "yara"
    assert indicator["x_opencti_main_observable_type"] == "StixFile"
    observable = api.stix_cyber_observable.read(id=ids["file"])
    assert observable["x_opencti_score"] == 80
    assert [i["id"] for i in observable["indicators"]] == [indicator["id"]]
    assert api.stix_core_object.read(id=ids["incident"])["id"] == incident["id"]
    assert api.stix_domain_object.read(id=ids["indicator"])["entity_type"] == "Indicator"
    assert len(opencti.relationships(of=ids["file"])) == 2


def test_upsert_merges_properties_and_deduplicates_files_by_hash(
    opencti: OpenCTIEmulator,
) -> None:
    digest = sha256(b"merge me")
    first = stix_file(digest, x_opencti_labels=["a"], x_opencti_score=10)
    # Another producer names the same file by its MD5 too: another id, same SHA-256.
    second = stix_file(
        digest,
        id=f"file--{uuid.uuid4()}",
        hashes={"MD5": "0" * 32, "SHA-256": digest.upper()},
        x_opencti_labels=["b"],
        x_opencti_score=70,
        object_marking_refs=[TLP_AMBER],
    )
    opencti.ingest(bundle(AUTHOR, first))
    opencti.ingest(bundle(second))

    assert len(opencti.objects("file")) == 1
    assert opencti.record(first["id"]) is opencti.record(second["id"])
    found = api_client(opencti).stix_cyber_observable.read(filters=by_hash_filter(digest))
    assert found["standard_id"] == first["id"]
    assert sorted(label["value"] for label in found["objectLabel"]) == ["a", "b"]
    assert {m["definition"] for m in found["objectMarking"]} == {"TLP:GREEN", "TLP:AMBER"}
    assert found["x_opencti_score"] == 70  # scalars: the newest value wins
    assert {h["algorithm"] for h in found["hashes"]} == {"MD5", "SHA-256"}
    opencti.ingest(bundle(first))  # re-sent: still one object, its values back
    assert len(opencti.objects("StixFile")) == 1
    assert opencti.get(second["id"])["x_opencti_score"] == 10


def test_uploaded_artifacts_are_found_by_hash_and_served_back(opencti: OpenCTIEmulator) -> None:
    api = api_client(opencti)
    data = b"MZ" + bytes(range(256)) * 40
    digest = sha256(data)
    opencti.ingest(bundle(AUTHOR))
    uploaded = api.stix_cyber_observable.upload_artifact(
        file_name="/tmp/downloads/sample.exe",
        data=data,
        mime_type="application/x-dosexec",
        x_opencti_description="Downloaded from VirusTotal",
        createdBy=AUTHOR_ID,
        objectMarking=[TLP_GREEN],
    )
    assert uploaded["entity_type"] == "Artifact"
    assert uploaded["createdBy"]["standard_id"] == AUTHOR_ID

    found = api.stix_cyber_observable.read(filters=by_hash_filter(digest))
    assert found["id"] == uploaded["id"]
    assert found["x_opencti_description"] == "Downloaded from VirusTotal"
    [file] = found["importFiles"]
    assert (file["name"], file["size"]) == ("sample.exe", len(data))
    assert api.fetch_opencti_file_by_id(file["id"], binary=True) == data

    # Uploading again, or sending the Artifact in a bundle under another id, merges into it.
    api.stix_cyber_observable.upload_artifact(file_name="sample.exe", data=data)
    opencti.ingest(
        bundle(
            {
                "type": "artifact",
                "spec_version": "2.1",
                "id": f"artifact--{uuid.uuid4()}",
                "hashes": {"SHA-256": digest},
            }
        )
    )
    assert len(opencti.objects("Artifact")) == 1
    assert [f.data for f in opencti.artifacts()] == [data]


# -- works ------------------------------------------------------------------------------------
def test_work_status_follows_what_the_connector_reports(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator
) -> None:
    helper = connector_helper("EXTERNAL_IMPORT")
    work_api = helper.api.work
    work_id = work_api.initiate_work(helper.connect_id, "Livehunt window")
    assert work_api.get_work(work_id)["status"] == "wait"
    work_api.to_received(work_id, "started")
    assert work_api.get_work(work_id)["status"] == "progress"
    work_api.to_processed(work_id, "VT answered 429 three times", in_error=True)

    work = work_api.get_work(work_id)
    assert work["status"] == "complete"
    assert [e["message"] for e in work["errors"]] == ["VT answered 429 three times"]
    assert [w["id"] for w in work_api.get_connector_works(helper.connect_id)] == [work_id]
    assert work_api.get_is_work_alive(work_id)
    work_api.delete(id=work_id)
    assert not work_api.get_is_work_alive(work_id)
    assert opencti.work(work_id) is None


# -- enrichment -------------------------------------------------------------------------------
def test_asking_an_enrichment_publishes_the_platform_message_to_the_listen_queue(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator, rabbitmq: RabbitMQ
) -> None:
    helper = connector_helper("INTERNAL_ENRICHMENT")
    file = stix_file(sha256(b"enrich me"))
    opencti.ingest(bundle(AUTHOR, file))
    work_id = helper.api.stix_cyber_observable.ask_for_enrichment(
        id=file["id"], connector_id=helper.connect_id
    )

    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        method, _, body = connection.channel().basic_get(
            helper.connector_config["listen"], auto_ack=True
        )
    finally:
        connection.close()
    assert method is not None
    message = json.loads(body)
    assert message["internal"]["work_id"] == work_id
    assert message["internal"]["applicant_id"] is None  # as OpenCTI sends it
    event = message["event"]
    assert (event["entity_id"], event["entity_type"]) == (file["id"], "StixFile")
    assert json.loads(event["stix_entity"])["hashes"] == file["hashes"]
    assert opencti.work(work_id).name == f"Enrichment ({file['id']})"


def test_an_enrichment_round_trip_through_pycti_listen(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator
) -> None:
    helper = connector_helper("INTERNAL_ENRICHMENT")
    file = stix_file(sha256(b"round trip"))
    opencti.ingest(bundle(AUTHOR, file))
    seen: list[dict[str, Any]] = []

    def enrich(event: dict[str, Any]) -> str:
        seen.append(event)
        content = "VT says: 3/70 engines"
        note = {
            "type": "note",
            "spec_version": "2.1",
            "id": Note.generate_id(None, content),
            "created": T0,
            "modified": T0,
            "content": content,
            "object_refs": [event["entity_id"]],
        }
        helper.send_stix2_bundle(bundle(note))
        return "enriched"

    threading.Thread(target=helper.listen, args=(enrich,), daemon=True).start()
    work_id = opencti.ask_enrichment(file["id"], helper.connect_id)
    work = opencti.wait_for_work(work_id, timeout=15)

    assert [m["message"] for m in work.messages][-1] == "enriched"
    [event] = seen
    assert event["enrichment_entity"]["hashes"] == [
        {"algorithm": "SHA-256", "hash": file["hashes"]["SHA-256"]}
    ]
    assert event["enrichment_entity"]["importFiles"] == []  # read withFiles=True
    assert event["stix_entity"]["id"] == file["id"]
    assert opencti.counts()["Note"] == 1


# -- gaps and faults --------------------------------------------------------------------------
def test_unknown_operations_are_graphql_errors_naming_them(opencti: OpenCTIEmulator) -> None:
    api = api_client(opencti)
    with pytest.raises(ValueError, match="unsupported operation query somethingNew"):
        api.query("query Q { somethingNew(id: 1) { id } }")
    connector = opencti.platform.register_connector({"id": "c1", "type": "EXTERNAL_IMPORT"})
    work = opencti.platform.create_work(connector["id"], "w")
    with pytest.raises(ValueError, match=r"unsupported operation workEdit\.frobnicate"):
        api.query("mutation M($id: ID!) { workEdit(id: $id) { frobnicate } }", {"id": work.id})
    raw = requests.post(
        f"{opencti.url}/graphql",
        json={"query": "mutation { launchRocket }"},
        headers={"Authorization": f"Bearer {opencti.token}"},
        timeout=5,
    ).json()
    assert raw["errors"][0]["message"] == (
        "vt_pipeline OpenCTI emulator: unsupported operation mutation launchRocket"
    )


def test_an_outage_makes_pycti_fail_then_recover(opencti: OpenCTIEmulator) -> None:
    api = api_client(opencti)
    about = "query { about { version } }"
    opencti.set_outage(503)
    with pytest.raises(ValueError, match="simulated outage"):
        api.query(about)
    assert not api.health_check()
    requests.post(f"{opencti.url}/_emulator/outage", json={"enabled": False}, timeout=5)
    assert api.query(about)["data"]["about"]["version"]

    opencti.set_outage("refuse")
    with pytest.raises(requests.ConnectionError):
        api.query(about)
    opencti.clear_outage()
    assert api.health_check()

    opencti.set_outage(500, seconds=0.3)  # ends by itself
    with pytest.raises(ValueError):
        api.query(about)
    assert opencti.wait_until(lambda: opencti.outage is None, timeout=5)
    assert api.health_check()


def test_bundles_sent_during_an_outage_wait_in_rabbitmq(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator
) -> None:
    helper = connector_helper("EXTERNAL_IMPORT", "amqp")
    file = stix_file(sha256(b"queued during outage"))
    opencti.set_outage(503)
    helper.send_stix2_bundle(bundle(AUTHOR, file))  # the broker is up: accepted
    time.sleep(0.5)
    assert opencti.get(file["id"]) is None  # the workers are down with the platform
    opencti.clear_outage()
    assert opencti.wait_until(lambda: opencti.get(file["id"]) is not None, timeout=10)


def test_state_endpoint_summarizes_the_knowledge(opencti: OpenCTIEmulator) -> None:
    opencti.ingest(bundle(AUTHOR, stix_file(sha256(b"state"))))
    state = requests.get(f"{opencti.url}/_emulator/state", timeout=5).json()
    assert state["counts_by_type"]["StixFile"] == 1
    assert state["counts_by_type"]["Marking-Definition"] == 5  # the TLPs OpenCTI ships
    assert state["outage"] == {"enabled": False}


def test_cli_entry_serves_until_stopped(rabbitmq: RabbitMQ, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    opencti_module.add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--amqp-url", rabbitmq.amqp_url, "--token", "t"])
    stop = threading.Event()
    thread = threading.Thread(target=opencti_module.run, args=(args, stop), daemon=True)
    thread.start()
    output = ""
    deadline = time.monotonic() + 10
    while "listening on" not in output and time.monotonic() < deadline:
        time.sleep(0.05)
        output += capsys.readouterr().out
    url = output.split("OpenCTI emulator listening on ")[1].split()[0]
    assert OpenCTIApiClient(url, "t", log_level="error").health_check()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_new_entities_in_scope_go_to_auto_enrichment_connectors(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator, rabbitmq: RabbitMQ
) -> None:
    enricher = connector_helper("INTERNAL_ENRICHMENT", scope="StixFile", auto=True)
    importer = connector_helper("EXTERNAL_IMPORT", "api")
    file = stix_file(sha256(b"auto"))
    importer.send_stix2_bundle(bundle(AUTHOR, file))  # the author is out of scope
    importer.send_stix2_bundle(bundle(AUTHOR, file))  # an update: no second request

    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        channel = connection.channel()
        listen = enricher.connector_config["listen"]
        _, _, body = channel.basic_get(listen, auto_ack=True)
        assert channel.basic_get(listen, auto_ack=True)[0] is None
    finally:
        connection.close()
    message = json.loads(body)
    assert message["internal"]["mode"] == "auto"
    assert message["event"]["entity_id"] == file["id"]
