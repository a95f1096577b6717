"""The OpenCTI emulator's upsert: lists merge by what identifies their items, not their text."""

from __future__ import annotations

from typing import Any

from vt_pipeline.emulators.opencti.store import merge_stix

DIGEST = "a" * 64


def merged(existing: dict[str, Any], *incoming: dict[str, Any]) -> dict[str, Any]:
    for obj in incoming:
        merge_stix(existing, obj)
    return existing


def test_observable_values_merge_by_type_and_value_whatever_form_they_come_in() -> None:
    stored = {
        "x_opencti_observable_values": [
            {"type": "StixFile", "hashes": {"SHA-256": DIGEST}},
            {"type": "Domain-Name", "value": "example.org"},
        ]
    }
    as_read = [
        {"type": "StixFile", "value": DIGEST, "hashes": [{"algorithm": "MD5", "hash": "b" * 32}]},
        {"type": "Domain-Name", "value": "example.org", "hashes": None},
        {"type": "Hostname", "value": "example.org", "hashes": None},  # another type: another one
    ]
    values = merged(stored, {"x_opencti_observable_values": as_read})["x_opencti_observable_values"]
    assert values == [
        {"type": "StixFile", "hashes": {"SHA-256": DIGEST, "MD5": "b" * 32}, "value": DIGEST},
        {"type": "Domain-Name", "value": "example.org"},
        {"type": "Hostname", "value": "example.org", "hashes": None},
    ]


def test_external_references_merge_by_url_else_source_and_id() -> None:
    first = {"source_name": "VirusTotal", "url": "https://vt/x", "description": "old"}
    by_id = {"source_name": "MITRE", "external_id": "T1059"}
    stored = {"external_references": [first, by_id], "labels": ["a"]}
    merged(
        stored,
        {
            "external_references": [
                {"source_name": "VirusTotal", "url": "https://vt/x", "description": "new"},
                {"source_name": "MITRE", "external_id": "T1059", "url": None},
                {"source_name": "VirusTotal", "url": "https://vt/y"},
            ],
            "labels": ["a", "b"],
        },
    )
    assert stored["external_references"] == [
        {"source_name": "VirusTotal", "url": "https://vt/x", "description": "new"},
        by_id,
        {"source_name": "VirusTotal", "url": "https://vt/y"},
    ]
    assert stored["labels"] == ["a", "b"]


def test_other_items_ignore_null_members_and_refs_merge_by_id() -> None:
    phase = {"kill_chain_name": "mitre-attack", "phase_name": "execution"}
    stored = {"kill_chain_phases": [phase], "granular": [{"id": "x--1", "n": 1}]}
    merged(
        stored,
        {
            "kill_chain_phases": [{**phase, "x_opencti_order": None}],
            "granular": [{"id": "x--1", "n": 2}, {"id": "x--2"}],
        },
    )
    assert stored == {
        "kill_chain_phases": [phase],
        "granular": [{"id": "x--1", "n": 2}, {"id": "x--2"}],
    }
