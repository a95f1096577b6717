"""What the enrichment sensor and job rely on in the OpenCTI emulator, through the real pycti
over a real RabbitMQ: test set-up of entities, reads the way pycti's enrichment path does them,
enrichment and playbook requests on the listen queue, playbook answers, scores and notes."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from pycti import Note, StixCoreRelationship

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.opencti.store import OPENCTI_EXTENSION, TLP_MARKINGS
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline_tests.conftest import take

pytestmark = pytest.mark.integration

SCOPE = "StixFile,Artifact,IPv4-Addr,Domain-Name,Hostname,Url,Indicator"
SAMPLE = b"MZ\x90\x00 an artifact the enrichment uploads"
T0 = "2026-01-02T03:04:05.000Z"


@pytest.fixture
def enricher(connector_helper: Callable[..., Any]) -> Any:
    """A registered enrichment connector (pycti helper), not listening."""
    return connector_helper("INTERNAL_ENRICHMENT", scope=SCOPE)


def pycti_enrichment_read(api: Any, entity_type: str, entity_id: str) -> tuple[dict, dict, list]:
    """Exactly what `ListenQueue._data_handler` does for an enrichment request."""
    entity = api.stix2.get_reader(entity_type)(id=entity_id, withFiles=True)
    assert entity is not None
    objects = api.stix2.prepare_export(entity=api.stix2.generate_export(copy.copy(entity)))
    stix_entity = next(
        e
        for e in objects
        if e["id"] == entity["standard_id"] or e["id"] == "x-opencti-" + entity["standard_id"]
    )
    return entity, stix_entity, objects


@pytest.fixture
def entities(opencti: OpenCTIEmulator) -> Iterator[dict[str, str]]:
    """One entity of each scope type, marked, labelled and scored."""
    yield {
        "StixFile": opencti.create_observable(
            "StixFile",
            hashes={"SHA-256": hashlib.sha256(b"file").hexdigest()},
            name="dropper.exe",
            markings=["TLP:GREEN", "TLP:AMBER"],
            labels=["suspicious"],
            score=40,
        ),
        "Artifact": opencti.create_artifact(SAMPLE, "sample.exe", markings=["TLP:CLEAR"], score=10),
        "IPv4-Addr": opencti.create_observable("IPv4-Addr", "203.0.113.7", markings=["TLP:RED"]),
        "Domain-Name": opencti.create_observable("Domain-Name", "example.org", labels=["a", "b"]),
        "Hostname": opencti.create_observable("Hostname", "www.example.org", score=55),
        "Url": opencti.create_observable("Url", "http://example.org/a?b='c'"),
        "Indicator": opencti.create_indicator(
            "[domain-name:value = 'example.org']",
            observable_values=[{"type": "Domain-Name", "value": "example.org"}],
            markings=["TLP:AMBER+STRICT", "PAP:RED"],
            score=70,
        ),
    }


def test_pycti_reads_every_scope_type_the_way_its_enrichment_path_does(
    opencti: OpenCTIEmulator, entities: dict[str, str]
) -> None:
    api = opencti.api_client()
    for entity_type, entity_id in entities.items():
        entity, stix_entity, objects = pycti_enrichment_read(api, entity_type, entity_id)
        assert entity["entity_type"] == entity_type
        assert stix_entity["id"] == entity_id
        assert stix_entity["x_opencti_type"] == entity_type
        markings = {o["id"]: o for o in objects if o["type"] == "marking-definition"}
        assert set(markings) == set(stix_entity.get("object_marking_refs", []))
        for marking in entity["objectMarking"]:  # what a max-TLP check reads
            assert marking["definition_type"] and marking["definition"]

    file, stix_file, _ = pycti_enrichment_read(api, "StixFile", entities["StixFile"])
    assert {(m["definition_type"], m["definition"]) for m in file["objectMarking"]} == {
        ("TLP", "TLP:GREEN"),
        ("TLP", "TLP:AMBER"),
    }
    assert file["x_opencti_score"] == stix_file["x_opencti_score"] == 40
    assert stix_file["hashes"] == {"SHA-256": hashlib.sha256(b"file").hexdigest()}
    assert stix_file["x_opencti_labels"] == ["suspicious"]

    artifact, stix_artifact, _ = pycti_enrichment_read(api, "Artifact", entities["Artifact"])
    assert [f["name"] for f in artifact["importFiles"]] == ["sample.exe"]
    assert base64.b64decode(stix_artifact["payload_bin"]) == SAMPLE
    assert stix_artifact["hashes"]["SHA-256"] == hashlib.sha256(SAMPLE).hexdigest()
    assert [m["definition"] for m in artifact["objectMarking"]] == ["TLP:CLEAR"]

    indicator, stix_indicator, objects = pycti_enrichment_read(
        api, "Indicator", entities["Indicator"]
    )
    assert indicator["x_opencti_observable_values"][0]["value"] == "example.org"
    assert stix_indicator["pattern"] == "[domain-name:value = 'example.org']"
    assert indicator["x_opencti_score"] == 70
    assert {(m["definition_type"], m["definition"]) for m in indicator["objectMarking"]} == {
        ("TLP", "TLP:AMBER+STRICT"),
        ("PAP", "PAP:RED"),
    }
    hostname, _, _ = pycti_enrichment_read(api, "Hostname", entities["Hostname"])
    assert (hostname["observable_value"], hostname["x_opencti_score"]) == ("www.example.org", 55)
    assert opencti.markings_of(entities["IPv4-Addr"]) == ["TLP:RED"]
    assert opencti.labels_of(entities["Domain-Name"]) == ["a", "b"]


def test_an_artifact_without_a_file_reads_with_its_hashes_and_no_payload(
    opencti: OpenCTIEmulator,
) -> None:
    """Upstream saw prepare_export raise IndexError here (it read importFiles[0]); pycti 7
    drops the empty importFiles first, so the entity comes without payload_bin."""
    api = opencti.api_client()
    artifact_id = opencti.create_artifact(b"hash only", with_file=False)
    entity, stix_artifact, _ = pycti_enrichment_read(api, "Artifact", artifact_id)
    assert entity["importFiles"] == []
    assert "payload_bin" not in stix_artifact and "x_opencti_files" not in stix_artifact
    assert stix_artifact["hashes"]["SHA-256"] == hashlib.sha256(b"hash only").hexdigest()


def test_an_artifact_sent_with_payload_bin_keeps_its_bytes_as_a_file(
    opencti: OpenCTIEmulator,
) -> None:
    artifact = {
        "type": "artifact",
        "spec_version": "2.1",
        "id": "artifact--6f6b9c76-7d3e-5b1b-8f4e-1c2d3e4f5a6b",
        "payload_bin": base64.b64encode(SAMPLE).decode(),
        "mime_type": "application/x-dosexec",
        "x_opencti_additional_names": ["from-bundle.exe"],
    }
    opencti.ingest({"type": "bundle", "id": "bundle--1", "objects": [artifact]})
    api = opencti.api_client()
    _, stix_artifact, _ = pycti_enrichment_read(api, "Artifact", artifact["id"])
    assert base64.b64decode(stix_artifact["payload_bin"]) == SAMPLE
    assert stix_artifact["hashes"]["MD5"] == hashlib.md5(SAMPLE).hexdigest()
    assert [f.name for f in opencti.artifacts()] == ["from-bundle.exe"]


def test_ask_enrichment_creates_a_work_and_publishes_opencti_s_message(
    opencti: OpenCTIEmulator, enricher: Any, entities: dict[str, str], rabbitmq: RabbitMQ
) -> None:
    work_id = opencti.ask_enrichment(entities["Hostname"], enricher.connect_id)
    via_api = enricher.api.stix_cyber_observable.ask_for_enrichment(
        id=entities["Url"], connector_id=enricher.connect_id
    )

    first, second = (json.loads(b) for b in take(rabbitmq, enricher.connector_config["listen"]))
    assert first["internal"] == {
        "work_id": work_id,
        "applicant_id": None,
        "draft_id": None,
        "trigger": "update",
        "mode": "manual",
    }
    assert (first["event"]["entity_id"], first["event"]["entity_type"]) == (
        entities["Hostname"],
        "Hostname",
    )
    assert "playbook" not in first["internal"]
    assert second["internal"]["work_id"] == via_api
    work = opencti.work(work_id)
    assert work is not None and work.connector_id == enricher.connect_id
    assert (work.status, work.in_error, work.event_source_id) == (
        "wait",
        False,
        entities["Hostname"],
    )


def test_auto_enrichment_requests_are_flagged_auto_with_trigger_create(
    opencti: OpenCTIEmulator, connector_helper: Callable[..., Any], rabbitmq: RabbitMQ
) -> None:
    auto = connector_helper("INTERNAL_ENRICHMENT", scope="IPv4-Addr,Url", auto=True)
    ip = opencti.create_observable("IPv4-Addr", "198.51.100.1")
    opencti.create_observable("Domain-Name", "out-of-scope.example")  # not in its scope
    opencti.create_observable("IPv4-Addr", "198.51.100.1")  # the same one: no new request

    [body] = take(rabbitmq, auto.connector_config["listen"])
    message = json.loads(body)
    assert (message["internal"]["mode"], message["internal"]["trigger"]) == ("auto", "create")
    assert message["event"]["entity_id"] == ip
    work = opencti.work(message["internal"]["work_id"])
    assert work is not None and work.connector_id == auto.connect_id


def test_a_playbook_request_carries_the_bundle_and_pycti_answers_the_step(
    opencti: OpenCTIEmulator, enricher: Any, entities: dict[str, str], rabbitmq: RabbitMQ
) -> None:
    execution_id = opencti.ask_playbook_enrichment(entities["StixFile"], enricher.connect_id)
    [body] = take(rabbitmq, enricher.connector_config["listen"])
    message = json.loads(body)
    internal, event = message["internal"], message["event"]
    assert internal["work_id"] is None
    playbook = internal["playbook"]
    assert playbook["execution_id"] == execution_id
    assert set(playbook) == {
        "execution_id",
        "event_id",
        "playbook_id",
        "data_instance_id",
        "step_id",
        "previous_step_id",
    }
    assert event["entity_id"] == entities["StixFile"]
    objects = event["bundle"]["objects"]
    assert [o["id"] for o in objects if o["id"] == event["entity_id"]] == [entities["StixFile"]]
    assert {o["type"] for o in objects} == {"file", "marking-definition"}

    # pycti's own answer, as `send_stix2_bundle` makes it when helper.playbook is set.
    note = {
        "type": "note",
        "spec_version": "2.1",
        "id": Note.generate_id(T0, "VT says"),
        "created": T0,
        "modified": T0,
        "content": "VT says",
        "object_refs": [event["entity_id"]],
    }
    answer = {"type": "bundle", "id": "bundle--2", "objects": [*objects, note]}
    enricher.api.playbook.playbook_step_execution(
        {**playbook, "execution_start": T0, "previous_bundle": json.dumps(event["bundle"])},
        json.dumps(answer),
    )
    assert opencti.playbook_results(execution_id) == [answer]
    [step] = opencti.playbook_steps(execution_id)
    assert (step.step_id, step.previous_bundle) == (playbook["step_id"], event["bundle"])
    assert opencti.playbook_results("another execution") == []
    assert opencti.notes_about(entities["StixFile"]) == []  # a playbook answer is not ingested


def test_publish_raw_puts_any_bytes_on_the_listen_queue(
    opencti: OpenCTIEmulator, enricher: Any, rabbitmq: RabbitMQ
) -> None:
    opencti.publish_raw(enricher.connect_id, b"{not json")
    assert take(rabbitmq, enricher.connector_config["listen"]) == [b"{not json"]


def test_sent_scores_notes_and_relationships_are_readable_by_entity(
    opencti: OpenCTIEmulator, enricher: Any, entities: dict[str, str]
) -> None:
    """An enrichment's bundle, as pycti sends it for a work: score in OpenCTI's extension
    (`put_attribute_in_extension`), a note, an indicator based on the observable."""
    file_id = entities["StixFile"]
    work_id = opencti.ask_enrichment(file_id, enricher.connect_id)
    _, stix_file, _ = pycti_enrichment_read(enricher.api, "StixFile", file_id)
    stix_file = enricher.api.stix2.put_attribute_in_extension(
        stix_file, OPENCTI_EXTENSION, "score", 87
    )
    note = {
        "type": "note",
        "spec_version": "2.1",
        "id": Note.generate_id(T0, "VT: 60/70"),
        "created": T0,
        "modified": T0,
        "content": "VT: 60/70",
        "object_refs": [file_id],
    }
    pattern = "[file:hashes.'SHA-256' = '" + hashlib.sha256(b"file").hexdigest() + "']"
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--0b6f4f6e-6e1e-4b8e-9d3c-7f6e5d4c3b2a",
        "created": T0,
        "modified": T0,
        "name": "dropper.exe",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": T0,
    }
    based_on = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": StixCoreRelationship.generate_id("based-on", indicator["id"], file_id),
        "created": T0,
        "modified": T0,
        "relationship_type": "based-on",
        "source_ref": indicator["id"],
        "target_ref": file_id,
    }
    objects = [stix_file, note, indicator, based_on]
    enricher.send_stix2_bundle(
        json.dumps({"type": "bundle", "id": "bundle--3", "objects": objects}), work_id=work_id
    )
    enricher.api.work.to_processed(work_id, "enriched")
    work = opencti.wait_for_work(work_id, timeout=15)

    assert (work.status, work.in_error) == ("complete", False)
    assert opencti.score_of(file_id) == 87
    assert enricher.api.stix_cyber_observable.read(id=file_id)["x_opencti_score"] == 87
    assert [n["content"] for n in opencti.notes_about(file_id)] == ["VT: 60/70"]
    assert [i["id"] for i in opencti.indicators_based_on(file_id)] == [indicator["id"]]
    assert [r["id"] for r in opencti.relationships_of(file_id, "based-on", "to")] == [
        based_on["id"]
    ]
    assert opencti.relationships_of(file_id, "based-on", "from") == []
    assert opencti.score_of(entities["Domain-Name"]) is None
    with pytest.raises(KeyError):
        opencti.score_of("file--00000000-0000-5000-8000-000000000000")


def test_a_work_reported_in_error_says_so(
    opencti: OpenCTIEmulator, enricher: Any, entities: dict[str, str]
) -> None:
    work_id = opencti.ask_enrichment(entities["IPv4-Addr"], enricher.connect_id)
    enricher.api.work.to_received(work_id, "received")
    enricher.api.work.to_processed(work_id, "Entity above max TLP (TLP:RED)", True)
    work = opencti.work(work_id)
    assert work is not None
    assert (work.status, work.in_error) == ("complete", True)
    assert [e["message"] for e in work.errors] == ["Entity above max TLP (TLP:RED)"]
    assert work.summary()["in_error"] is True


def test_markings_are_tlp_names_type_values_or_ids(opencti: OpenCTIEmulator) -> None:
    red = TLP_MARKINGS["TLP:RED"][0]
    entity = opencti.create_observable("Url", "http://x.example/", markings=[red, "PAP:GREEN"])
    assert sorted(opencti.markings_of(entity)) == ["PAP:GREEN", "TLP:RED"]
    with pytest.raises(ValueError, match="TYPE:VALUE"):
        opencti.create_observable("Url", "http://y.example/", markings=["nonsense"])
    with pytest.raises(ValueError, match="unknown observable type"):
        opencti.create_observable("Weird-Type", "x")


def test_a_playbook_round_trip_through_pycti_listen(
    opencti: OpenCTIEmulator, enricher: Any, entities: dict[str, str]
) -> None:
    """pycti's ListenQueue takes the playbook message, and `send_stix2_bundle` answers the
    step with `playbookStepExecution` instead of a work."""
    seen: list[dict[str, Any]] = []

    def enrich(event: dict[str, Any]) -> str:
        seen.append(event)
        note = {
            "type": "note",
            "spec_version": "2.1",
            "id": Note.generate_id(T0, "from the playbook"),
            "created": T0,
            "modified": T0,
            "content": "from the playbook",
            "object_refs": [event["entity_id"]],
        }
        objects = [*event["stix_objects"], note]
        enricher.send_stix2_bundle(
            json.dumps({"type": "bundle", "id": "bundle--4", "objects": objects})
        )
        return "sent"

    threading.Thread(target=enricher.listen, args=(enrich,), daemon=True).start()
    execution_id = opencti.ask_playbook_enrichment(entities["Domain-Name"], enricher.connect_id)
    assert opencti.wait_until(lambda: bool(opencti.playbook_results(execution_id)), timeout=15)

    [event] = seen
    assert event["stix_entity"]["id"] == entities["Domain-Name"]
    assert event["enrichment_entity"]["observable_value"] == "example.org"
    [result] = opencti.playbook_results(execution_id)
    assert {o["type"] for o in result["objects"]} == {"domain-name", "note"}
    [step] = opencti.playbook_steps(execution_id)
    assert step.previous_bundle is not None and step.execution_start
    assert opencti.works(enricher.connect_id) == []  # a playbook request has no work


def test_an_indicator_on_several_observables_reads_every_value(opencti: OpenCTIEmulator) -> None:
    digest = hashlib.sha256(b"indicated").hexdigest()
    pattern = f"[file:hashes.'SHA-256' = '{digest}'] OR [ipv4-addr:value = '192.0.2.9']"
    indicator_id = opencti.create_indicator(
        pattern,
        observable_values=[
            {"type": "StixFile", "hashes": {"SHA-256": digest}},
            {"type": "IPv4-Addr", "value": "192.0.2.9"},
        ],
    )
    entity, stix_indicator, _ = pycti_enrichment_read(
        opencti.api_client(), "Indicator", indicator_id
    )
    assert entity["x_opencti_observable_values"] == [
        {"type": "StixFile", "value": digest, "hashes": [{"algorithm": "SHA-256", "hash": digest}]},
        {"type": "IPv4-Addr", "value": "192.0.2.9", "hashes": None},
    ]
    assert entity["x_opencti_main_observable_type"] == "StixFile"
    assert stix_indicator["pattern"] == pattern


def test_an_indicator_sent_back_as_read_keeps_one_entry_per_observable_value(
    opencti: OpenCTIEmulator, enricher: Any
) -> None:
    """pycti reads observable values with `"hashes": null` (and a file's hashes as a list);
    an enrichment that sends the Indicator back that way must not double them."""
    digest = hashlib.sha256(b"sent back").hexdigest()
    pattern = f"[file:hashes.'SHA-256' = '{digest}'] OR [domain-name:value = 'example.net']"
    indicator_id = opencti.create_indicator(
        pattern,
        observable_values=[
            {"type": "StixFile", "hashes": {"SHA-256": digest}},
            {"type": "Domain-Name", "value": "example.net"},
        ],
    )
    work_id = opencti.ask_enrichment(indicator_id, enricher.connect_id)
    entity, stix_indicator, _ = pycti_enrichment_read(enricher.api, "Indicator", indicator_id)
    read_back = entity["x_opencti_observable_values"]
    assert read_back[1] == {"type": "Domain-Name", "value": "example.net", "hashes": None}
    extra = {"type": "IPv4-Addr", "value": "192.0.2.10"}
    stix_indicator["x_opencti_observable_values"] = [*read_back, extra]
    bundle = {"type": "bundle", "id": "bundle--4", "objects": [stix_indicator]}
    for _ in range(2):  # a re-run sends the same again
        enricher.send_stix2_bundle(json.dumps(bundle), work_id=work_id)
    enricher.api.work.to_processed(work_id, "enriched")
    assert opencti.wait_for_work(work_id, timeout=15).in_error is False

    values = enricher.api.indicator.read(id=indicator_id)["x_opencti_observable_values"]
    assert values == [
        {"type": "StixFile", "value": digest, "hashes": [{"algorithm": "SHA-256", "hash": digest}]},
        {"type": "Domain-Name", "value": "example.net", "hashes": None},
        {"type": "IPv4-Addr", "value": "192.0.2.10", "hashes": None},
    ]


def test_another_process_sets_up_and_reads_over_http(
    opencti: OpenCTIEmulator, enricher: Any, rabbitmq: RabbitMQ
) -> None:
    """The demo and `ui` run the emulator in another process: the same set-up over HTTP."""
    base = opencti.url + "/_emulator"
    created = requests.post(
        f"{base}/entities",
        json={"entity_type": "Hostname", "value": "cdn.example.net", "markings": ["TLP:GREEN"]},
        timeout=10,
    )
    assert created.status_code == 200
    host_id = created.json()["id"]
    artifact = requests.post(
        f"{base}/entities",
        json={"entity_type": "Artifact", "data_base64": base64.b64encode(SAMPLE).decode()},
        timeout=10,
    ).json()["id"]
    assert opencti.artifacts()[0].data == SAMPLE and opencti.get(artifact) is not None
    request = {"entity_id": host_id, "connector_id": enricher.connect_id}
    asked = requests.post(f"{base}/enrich", json=request, timeout=10).json()
    played = requests.post(f"{base}/enrich", json={**request, "playbook": True}, timeout=10).json()
    first, second = (json.loads(b) for b in take(rabbitmq, enricher.connector_config["listen"]))
    assert first["internal"]["work_id"] == asked["work_id"]
    assert second["internal"]["playbook"]["execution_id"] == played["execution_id"]

    summary = requests.get(f"{base}/entities/{host_id}", timeout=10).json()
    assert (summary["entity_type"], summary["observable_value"]) == ("Hostname", "cdn.example.net")
    assert (summary["markings"], summary["notes"], summary["score"]) == (["TLP:GREEN"], [], None)
    bad = requests.post(f"{base}/entities", json={"entity_type": "Nope", "value": "x"}, timeout=10)
    assert bad.status_code == 400 and "unknown observable type" in bad.json()["message"]
    unknown = requests.get(f"{base}/entities/url--00000000-0000-5000-8000-000000000000", timeout=10)
    assert unknown.status_code == 404
