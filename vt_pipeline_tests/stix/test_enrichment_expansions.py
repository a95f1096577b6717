"""The pure mapping of the enrichment expansions: families, ATT&CK, Sigma and IDS, comments and
GTI context, from typed VT values (`virustotal/expansions.py`) to STIX, every relationship one
OpenCTI's matrix accepts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml
from pycti import AttackPattern, IntrusionSet, Malware

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.stix.enrichment import EnrichmentMappingOptions, EnrichmentResult
from vt_pipeline.stix.enrichment.detection_rules import sigma_yaml
from vt_pipeline.virustotal.expansions import (
    Comment,
    Expansions,
    SigmaRule,
    Technique,
    ThreatObject,
    read_associations,
    read_attributes,
    read_comments,
    read_mitre_trees,
)
from vt_pipeline.virustotal.reports import read_report
from vt_pipeline_tests import enrichment_factories as ef
from vt_pipeline_tests.stix.test_enrichment import REQUESTED, enrich, of_type, relations

AMBER = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
ALL_ON = EnrichmentMappingOptions(
    file_malware_family=True,
    file_attack_patterns=True,
    file_import_sigma=True,
    file_import_ids=True,
    create_note_comments=True,
)
SIGMA_ID = "a" * 64
SIGMA_RULE = SigmaRule(
    SIGMA_ID,
    {
        "title": "Suspicious Encoded PowerShell",
        "level": "high",
        "status": "stable",
        "log_source": {"category": "process_creation", "product": "windows", "service": ""},
        "detection": {"condition": "selection", "details": {"selection": {"Image": "x"}}},
    },
)
RAW_RULE = 'alert dns any any -> any any (msg:"ET INFO x"; sid:2027865; rev:4;)'
OPENCTI_TYPES = {
    "file": "StixFile",
    "malware": "Malware",
    "attack-pattern": "Attack-Pattern",
    "indicator": "Indicator",
    "intrusion-set": "Intrusion-Set",
    "campaign": "Campaign",
    "ipv4-addr": "IPv4-Addr",
    "ipv6-addr": "IPv6-Addr",
    "domain-name": "Domain-Name",
    "url": "Url",
    "autonomous-system": "Autonomous-System",
    "location": "Country",
}


def vt_file_with(**attributes: Any) -> dict[str, Any]:
    obj = ef.vt_file()
    obj["attributes"].update(attributes)
    return obj


def expanded(vt_object: dict[str, Any], **values: Any) -> Any:
    """The typed report with the expansions the lookup carries, plus `values`."""
    base, invalid = read_attributes(vt_object)
    report = read_report("file", vt_object)
    return replace(report, expansions=replace(base, invalid=invalid, **values))


CLASSIFICATION = {
    "suggested_threat_label": "trojan.dllhijacker/cometer",
    "popular_threat_name": [
        {"count": 6, "value": "dllhijacker"},
        {"count": 3, "value": "cometer"},
        {"count": 2, "value": "fqne"},
        {"count": 9, "value": "bad\u202ename"},
        "not an object",
    ],
}


def matrix_accepts(result: EnrichmentResult) -> None:
    types = {o["id"]: o["type"] for o in result.objects}
    for rel in of_type(result, "relationship"):
        source, target = types[rel["source_ref"]], types[rel["target_ref"]]
        assert matrix.accepts(
            OPENCTI_TYPES[source],
            OPENCTI_TYPES[target],
            rel["relationship_type"],
            target in ("file", "ipv4-addr", "ipv6-addr", "domain-name", "url"),
        ), (source, rel["relationship_type"], target)


def test_families_above_the_minimum_of_engines_with_pycti_ids() -> None:
    entity = ef.opencti_file()
    report = expanded(vt_file_with(popular_threat_classification=CLASSIFICATION))
    result = enrich(entity, "StixFile", report, replace(ALL_ON, file_attack_patterns=False))
    families = of_type(result, "malware")
    assert {m["id"] for m in families} == {
        Malware.generate_id("dllhijacker"),
        Malware.generate_id("cometer"),
    }
    assert all(m["is_family"] and "object_marking_refs" not in m for m in families)
    assert {(entity["id"], "related-to", m["id"]) for m in families} <= relations(result)
    assert result.stats["malware_families"] == 2
    assert result.stats["invalid_values"] >= 2  # the bidi name and the non-object
    strict = replace(ALL_ON, file_malware_family_min_engines=7)
    assert not of_type(enrich(entity, "StixFile", report, strict), "malware")
    matrix_accepts(result)


def test_techniques_are_mitre_attack_patterns_used_by_the_family_else_the_file() -> None:
    entity = ef.opencti_file()
    techniques = (
        Technique("T1059.001", "PowerShell", ("Zenbox",)),
        Technique("T1082", "System Information Discovery", ("Zenbox", "CAPE")),
    )
    report = expanded(
        vt_file_with(popular_threat_classification=CLASSIFICATION), techniques=techniques
    )
    result = enrich(entity, "StixFile", report, ALL_ON)
    patterns = of_type(result, "attack-pattern")
    assert {p["id"] for p in patterns} == {
        AttackPattern.generate_id("PowerShell", "T1059.001"),
        AttackPattern.generate_id("whatever the name", "T1082"),  # the ATT&CK id decides
    }
    family = Malware.generate_id("dllhijacker")  # the most engines
    assert {(family, "uses", p["id"]) for p in patterns} <= relations(result)
    matrix_accepts(result)
    alone = enrich(entity, "StixFile", report, replace(ALL_ON, file_malware_family=False))
    assert {(entity["id"], "uses", p["id"]) for p in patterns} <= relations(alone)
    matrix_accepts(alone)


def test_sigma_and_ids_results_become_indicators_with_their_rules() -> None:
    entity = ef.opencti_file()
    vt_object = vt_file_with(
        sigma_analysis_results=[
            {"rule_id": SIGMA_ID, "rule_title": "Encoded PowerShell", "rule_level": "high"},
            {"rule_id": "b" * 64, "rule_title": "Not served", "rule_level": "low"},
        ],
        crowdsourced_ids_results=[
            {
                "rule_id": "1:2027865",
                "rule_msg": "ET INFO x",
                "rule_source": "Proofpoint ET Open",
                "rule_raw": RAW_RULE,
            },
            {
                "rule_id": "1:1",
                "rule_msg": "snort one",
                "rule_source": "Snort registered user ruleset",
                "rule_raw": RAW_RULE.replace("ET INFO x", "snort one"),
            },
            {"rule_id": "1:2", "rule_msg": "no text"},
        ],
    )
    report = expanded(vt_object, sigma_rules={SIGMA_ID: SIGMA_RULE})
    result = enrich(entity, "StixFile", report, ALL_ON, requested_at=REQUESTED)
    by_type = {
        i["pattern_type"]: i for i in of_type(result, "indicator") if i["pattern_type"] != "stix"
    }
    sigma = yaml.safe_load(by_type["sigma"]["pattern"])
    assert sigma["title"] == "Suspicious Encoded PowerShell" and sigma["level"] == "high"
    assert sigma["detection"] == {"selection": {"Image": "x"}, "condition": "selection"}
    assert sigma["logsource"] == {"category": "process_creation", "product": "windows"}
    assert by_type["suricata"]["pattern"] == RAW_RULE
    assert "snort one" in by_type["snort"]["pattern"]
    assert result.stats["sigma_rule_missing"] == 1 and result.stats["ids_rule_text_missing"] == 1
    for indicator in by_type.values():
        assert "object_marking_refs" not in indicator  # public rules
        assert indicator["valid_from"] == "2025-11-20T09:30:15.250Z"  # from the request
        assert (entity["id"], "related-to", indicator["id"]) in relations(result)
    matrix_accepts(result)


def test_comments_make_one_escaped_note_that_changes_only_with_them() -> None:
    entity = ef.opencti_file()
    hostile = Comment("f-x-1", 1_700_000_000, "a | b\nnext line <script>alert(1)</script> [x](y)")
    older = Comment("f-x-0", 1_600_000_000, "#malware plain", ("malware",), 3, 1)
    report = expanded(ef.vt_file(), comments=(hostile, older))
    result = enrich(entity, "StixFile", report, ALL_ON)
    (note,) = [
        n for n in of_type(result, "note") if n["abstract"] == "VirusTotal community comments"
    ]
    content = note["content"]
    assert "<script>" not in content and "&lt;script&gt;" in content
    assert "a \\| b next line" in content and "\\[x\\](y)" in content
    assert content.index("2023-11-14") < content.index("2020-09-13")  # newest first
    assert note["created"].startswith("2023-11-14")
    same = enrich(entity, "StixFile", report, ALL_ON)
    assert note["id"] in {n["id"] for n in of_type(same, "note")}
    newer = expanded(ef.vt_file(), comments=(Comment("f-x-2", 1_800_000_000, "new"), hostile))
    changed = enrich(entity, "StixFile", newer, ALL_ON)
    assert note["id"] not in {n["id"] for n in of_type(changed, "note")}


THREATS = (
    ThreatObject("threat-actor", "threat-actor--1", "APT28", "Actor", 1_600_000_000, None, ("X",)),
    ThreatObject("malware-family", "malware--1", "AGENTTESLA", "Stealer", 1_600_000_000),
    ThreatObject("campaign", "campaign--1", "Invoice Wave", None, 1_600_000_000),
    ThreatObject("report", "report--24-1", "Threat Activity Alert", None, 1_650_000_000),
)


@pytest.mark.parametrize(
    ("entity_type", "actor_rel", "family_rel"),
    [("StixFile", "uses", "related-to"), ("IPv4-Addr", "related-to", "communicates-with")],
)
def test_gti_threat_objects_with_relationships_the_matrix_accepts(
    entity_type: str, actor_rel: str, family_rel: str
) -> None:
    if entity_type == "StixFile":
        entity, vt_object, kind = ef.opencti_file(), ef.vt_file(), "file"
    else:
        entity, vt_object, kind = (
            ef.opencti_value_observable("IPv4-Addr", "203.0.113.7"),
            ef.vt_ip(),
            "ip_address",
        )
    entity["object_marking_refs"] = [AMBER]
    report = replace(read_report(kind, vt_object), expansions=Expansions(threat_objects=THREATS))
    result = enrich(entity, entity_type, report, EnrichmentMappingOptions())
    actor = IntrusionSet.generate_id("APT28")
    family = Malware.generate_id("agenttesla")  # merges with VT's lower-case family name
    rels = relations(result)
    if actor_rel == "uses":
        assert (actor, "uses", entity["id"]) in rels
        assert (entity["id"], family_rel, family) in rels
    else:
        assert (entity["id"], "related-to", actor) in rels
        assert (family, "communicates-with", entity["id"]) in rels
    (gti_report,) = of_type(result, "report")
    assert gti_report["object_refs"] == [entity["id"]]
    assert gti_report["published"].startswith("2022-04-15")
    for obj in result.objects:
        if obj["type"] in ("intrusion-set", "malware", "campaign", "report"):
            assert "object_marking_refs" not in obj
        if obj["type"] == "relationship":
            assert obj["object_marking_refs"] == [AMBER]
    assert result.stats["threat_objects"] == 4
    matrix_accepts(result)


def test_readers_take_vt_s_shapes_and_count_what_they_drop() -> None:
    trees = {
        "data": {
            "Zenbox": {
                "tactics": [
                    {"id": "TA0002", "techniques": [{"id": "T1059.001", "name": "PowerShell"}]},
                    {
                        "id": "TA0005",
                        "techniques": [
                            {"id": "T1059.001", "name": "PowerShell"},
                            {"id": "bad", "name": "x"},
                        ],
                    },
                ]
            },
            "CAPE Sandbox": {"tactics": []},
            "Broken": None,
        }
    }
    techniques, invalid = read_mitre_trees(trees)
    assert techniques == (Technique("T1059.001", "PowerShell", ("Zenbox",)),) and invalid == 1
    with pytest.raises(ValueError):
        read_mitre_trees({"data": []})
    comments, invalid = read_comments(
        {
            "data": [
                {"id": "c1", "attributes": {"date": 1, "text": "old"}},
                {"id": "c2", "attributes": {"date": 2, "text": "new"}},
                {"id": "c3", "attributes": {"date": 3, "text": ""}},
            ]
        },
        limit=1,
    )
    assert [c.text for c in comments] == ["new"] and invalid == 1
    threats, invalid = read_associations(
        {
            "data": [
                {
                    "id": "collection--1",
                    "attributes": {"collection_type": "collection", "name": "x"},
                },
                {"id": "report--1", "attributes": {"collection_type": "report", "name": "R"}},
                {"id": "malware--1", "attributes": {"collection_type": "malware-family"}},
            ]
        }
    )
    assert [t.kind for t in threats] == ["report"] and invalid == 1


def test_a_sigma_rule_gives_the_same_text_whatever_the_order_of_vt_s_json() -> None:
    """Its Indicator's id comes from the text: a stored copy (keys sorted) must not give a
    second Indicator."""
    shuffled = SigmaRule(
        SIGMA_ID,
        {
            "log_source": {"service": "", "product": "windows", "category": "process_creation"},
            "detection": {"details": {"selection": {"b": 1, "a": 2}}, "condition": "selection"},
            "title": "T",
        },
    )
    ordered = SigmaRule(
        SIGMA_ID,
        {
            "title": "T",
            "detection": {"condition": "selection", "details": {"selection": {"a": 2, "b": 1}}},
            "log_source": {"category": "process_creation", "product": "windows", "service": ""},
        },
    )
    assert sigma_yaml(shuffled) == sigma_yaml(ordered)
    assert sigma_yaml(SigmaRule(SIGMA_ID, {"title": "no detection"})) is None
