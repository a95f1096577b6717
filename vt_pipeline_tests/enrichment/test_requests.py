"""Enrichment requests: pycti's listen-queue messages parsed, bad ones refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vt_pipeline.enrichment.requests import (
    ENRICHMENT_OP,
    EnrichmentRequest,
    InvalidRequest,
    enrichment_run_config,
    parse_request,
)

WORK_ID = "work_1b6a9f3c"
ENTITY_ID = "file--6f1f3c2e-7a1d-5b7e-9c3a-2d4e5f6a7b8c"


def message(**changes: Any) -> dict[str, Any]:
    """A message as OpenCTI publishes an analyst's enrichment request."""
    body: dict[str, Any] = {
        "internal": {
            "work_id": WORK_ID,
            "applicant_id": "88ec0c6a-13ce-5e39-b486-354fe4a7084f",
            "draft_id": None,
            "trigger": "update",
            "mode": "manual",
        },
        "event": {
            "event_type": "INTERNAL_ENRICHMENT",
            "entity_id": ENTITY_ID,
            "entity_type": "StixFile",
            "stix_entity": json.dumps({"id": ENTITY_ID, "type": "file"}),
        },
    }
    for path, value in changes.items():
        section, key = path.split("__")
        body[section][key] = value
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


PLAYBOOK = {
    "execution_id": "exec-42",
    "event_id": "event-1",
    "playbook_id": "pb-7",
    "data_instance_id": ENTITY_ID,
    "step_id": "step-3",
    "previous_step_id": "step-2",
}
BUNDLE = {"type": "bundle", "id": "bundle--1", "objects": [{"id": ENTITY_ID, "type": "file"}]}


def test_an_analyst_request_is_keyed_by_its_work() -> None:
    request = parse_request(encode(message()))
    assert request == EnrichmentRequest(
        request_id=WORK_ID,
        entity_id=ENTITY_ID,
        entity_type="StixFile",
        work_id=WORK_ID,
        applicant_id="88ec0c6a-13ce-5e39-b486-354fe4a7084f",
        mode="manual",
    )
    assert request.kind == "interactive"


def test_auto_enrichment_is_told_apart() -> None:
    request = parse_request(encode(message(internal__mode="auto", internal__applicant_id=None)))
    assert request.kind == "auto"
    assert request.applicant_id is None


def test_a_playbook_request_is_keyed_by_execution_and_step() -> None:
    body = message(internal__work_id=None, event__bundle=BUNDLE)
    body["internal"]["playbook"] = PLAYBOOK
    request = parse_request(encode(body))
    assert request.request_id == "playbook:exec-42:step-3"
    assert request.work_id is None
    assert request.playbook == PLAYBOOK
    assert request.bundle == BUNDLE
    assert request.kind == "playbook"


def test_config_round_trip_is_json_and_exact() -> None:
    body = message(event__bundle=BUNDLE)
    body["internal"]["playbook"] = PLAYBOOK
    requests = [parse_request(encode(message())), parse_request(encode(body))]
    config = json.loads(json.dumps(enrichment_run_config(requests)))
    carried = config["ops"][ENRICHMENT_OP]["config"]["requests"]
    assert [EnrichmentRequest.from_config(item) for item in carried] == requests


def test_from_config_refuses_unknown_fields_and_missing_ids() -> None:
    with pytest.raises(InvalidRequest, match="entity_idd"):
        EnrichmentRequest.from_config({"request_id": "w", "entity_idd": "x"})
    with pytest.raises(InvalidRequest, match="entity_id"):
        EnrichmentRequest.from_config({"request_id": "w", "entity_type": "Url"})


@pytest.mark.parametrize(
    ("body", "reason", "work_id"),
    [
        (b"{not json", "not JSON", None),
        (b"\xff\xfe", "not JSON", None),
        (b"[1, 2]", "JSON list, not an object", None),
        (encode({"event": {}}), "no 'internal' object", None),
        (encode({"internal": {"work_id": WORK_ID}}), "no 'event' object", WORK_ID),
        (encode(message(event__entity_id=None)), r"no entity \(event.entity_id\)", WORK_ID),
        (encode(message(event__entity_id="  ")), "no entity", WORK_ID),
        (encode(message(event__entity_id=12)), "no entity", WORK_ID),
        (encode(message(event__entity_type=["StixFile"])), "entity_type is a list", WORK_ID),
        (encode(message(internal__work_id=7)), "work_id is a int", None),
        (encode(message(internal__applicant_id={})), "applicant_id is a dict", WORK_ID),
        (encode(message(internal__work_id=None)), "neither a work id nor a playbook", None),
    ],
)
def test_malformed_messages_say_what_is_wrong(
    body: bytes, reason: str, work_id: str | None
) -> None:
    with pytest.raises(InvalidRequest, match=reason) as caught:
        parse_request(body)
    assert caught.value.work_id == work_id


@pytest.mark.parametrize(
    ("playbook", "bundle", "reason"),
    [
        ("pb", BUNDLE, "playbook is not an object"),
        ({**PLAYBOOK, "step_id": None}, BUNDLE, "playbook.step_id"),
        ({k: v for k, v in PLAYBOOK.items() if k != "execution_id"}, BUNDLE, "execution_id"),
        (PLAYBOOK, None, "event.bundle"),
        (PLAYBOOK, {"objects": "x"}, "event.bundle"),
    ],
)
def test_malformed_playbook_messages_are_refused(playbook: Any, bundle: Any, reason: str) -> None:
    body = message(internal__work_id=None, event__bundle=bundle)
    body["internal"]["playbook"] = playbook
    with pytest.raises(InvalidRequest, match=reason):
        parse_request(encode(body))


def test_pycti_playbook_dict_is_what_pycti_builds() -> None:
    body = message(internal__work_id=None, event__bundle=BUNDLE)
    body["internal"]["playbook"] = PLAYBOOK
    playbook = parse_request(encode(body)).pycti_playbook("2026-11-23T10:00:00.000Z")
    assert playbook == {
        **{k: PLAYBOOK[k] for k in PLAYBOOK},
        "execution_start": "2026-11-23T10:00:00.000Z",
        "previous_bundle": json.dumps(BUNDLE),
    }
    with pytest.raises(InvalidRequest, match="not a playbook step"):
        parse_request(encode(message())).pycti_playbook("2026-11-23T10:00:00.000Z")
