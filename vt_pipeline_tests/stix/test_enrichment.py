"""VirusTotal lookup -> enrichment of an OpenCTI entity: data model, options, score rules, ids,
notes, Indicator entities, playbooks, determinism and hostile input."""

from __future__ import annotations

import copy
import json
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import stix2
from pycti import (
    STIX_EXT_OCTI,
    STIX_EXT_OCTI_SCO,
    Identity,
    Indicator,
    Location,
    Note,
    OpenCTIStix2,
    StixCoreRelationship,
)
from pycti.utils.constants import CustomObservableHostname

from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.stix import (
    EnrichmentMappingOptions,
    EnrichmentResult,
    build_enrichment,
    build_indicator_enrichment,
    enrichment_bundle,
    playbook_bundle,
    serialize_bundle,
    unchanged_playbook_bundle,
    validate_bundle,
)
from vt_pipeline.stix.enrichment import AUTHOR_NAME, STAT_KEYS
from vt_pipeline.stix.yara import find_rule
from vt_pipeline.virustotal import objects as vt
from vt_pipeline_tests import enrichment_factories as ef
from vt_pipeline_tests import factories

DEFAULTS = EnrichmentMappingOptions()
RULESET_ID = "0001a2b3c4"
RULESETS = {RULESET_ID: ef.vt_yara_ruleset(RULESET_ID)}
URL = "http://evil.example.com/login.php?next=a'b\\c"
ANALYSED = ef.ANALYSIS_STAMP


def options(**overrides: Any) -> EnrichmentMappingOptions:
    return EnrichmentMappingOptions(**overrides)


def enrich(
    entity: dict[str, Any],
    entity_type: str,
    vt_object: dict[str, Any],
    opts: EnrichmentMappingOptions = DEFAULTS,
    rulesets: dict[str, Any] | None = None,
    requested_at: datetime | None = None,
) -> EnrichmentResult:
    """Enrich, and check what every enrichment must hold: the input untouched, the bundle the
    job sends valid, counters complete, no unexpected failure, the same bytes twice."""
    before = copy.deepcopy(entity)
    result = build_enrichment(
        entity, entity_type, vt_object, opts, rulesets, requested_at=requested_at
    )
    assert entity == before
    bundle = enrichment_bundle(ef.context_objects(entity), result.objects)
    assert validate_bundle(bundle) == []
    assert set(result.stats) == set(STAT_KEYS)
    assert result.stats["section_errors"] == 0
    again = build_enrichment(
        entity, entity_type, vt_object, opts, rulesets, requested_at=requested_at
    )
    assert serialize_bundle(enrichment_bundle([], again.objects)) == serialize_bundle(
        enrichment_bundle([], result.objects)
    )
    return result


def of_type(result: EnrichmentResult, stix_type: str) -> list[dict[str, Any]]:
    return [obj for obj in result.objects if obj["type"] == stix_type]


def one(result: EnrichmentResult, stix_type: str) -> dict[str, Any]:
    found = of_type(result, stix_type)
    assert len(found) == 1, found
    return found[0]


def edited(result: EnrichmentResult, entity: dict[str, Any]) -> dict[str, Any]:
    return next(obj for obj in result.objects if obj["id"] == entity["id"])


def relations(result: EnrichmentResult) -> set[tuple[str, str, str]]:
    return {
        (r["source_ref"], r["relationship_type"], r["target_ref"])
        for r in of_type(result, "relationship")
    }


def detection_indicators(result: EnrichmentResult) -> list[dict[str, Any]]:
    return [i for i in of_type(result, "indicator") if i["pattern_type"] == "stix"]


def file_case() -> tuple[dict, str, dict]:
    return ef.opencti_file(), "StixFile", ef.vt_file()


# One (entity, type, VT object) per supported type, the pattern and main type of its Indicator.
CASES = {
    "StixFile": (
        lambda: ef.opencti_file(),
        lambda **kw: ef.vt_file(**kw),
        "[file:hashes.'SHA-256' = '{sha256}']",
        "StixFile",
        "file",
    ),
    "Artifact": (
        lambda: ef.opencti_file(artifact=True),
        lambda **kw: ef.vt_file(**kw),
        "[file:hashes.'SHA-256' = '{sha256}']",
        "StixFile",
        "file",
    ),
    "IPv4-Addr": (
        lambda: ef.opencti_value_observable("IPv4-Addr", "203.0.113.7"),
        lambda **kw: ef.vt_ip(**kw),
        "[ipv4-addr:value = '203.0.113.7']",
        "IPv4-Addr",
        "ip-address",
    ),
    "Domain-Name": (
        lambda: ef.opencti_value_observable("Domain-Name", "evil.example.com"),
        lambda **kw: ef.vt_domain(**kw),
        "[domain-name:value = 'evil.example.com']",
        "Domain-Name",
        "domain",
    ),
    "Hostname": (
        lambda: ef.opencti_value_observable("Hostname", "evil.example.com"),
        lambda **kw: ef.vt_domain(**kw),
        "[hostname:value = 'evil.example.com']",
        "Hostname",
        "domain",
    ),
    "Url": (
        lambda: ef.opencti_value_observable("Url", URL),
        lambda **kw: ef.vt_url(URL, **kw),
        "[url:value = 'http://evil.example.com/login.php?next=a\\'b\\\\c']",
        "Url",
        "url",
    ),
}
SHA256 = factories.hashes_for("sample")["sha256"]


def case(entity_type: str, **vt_kwargs: Any) -> tuple[dict, dict]:
    make_entity, make_vt, *_ = CASES[entity_type]
    return make_entity(), make_vt(**vt_kwargs)


# -- the entity and the author -----------------------------------------------------------------


@pytest.mark.parametrize("entity_type", list(CASES))
def test_entity_gets_score_reference_and_author(entity_type: str) -> None:
    entity, vt_object = case(entity_type, malicious=12, harmless=0, undetected=8)
    result = enrich(entity, entity_type, vt_object)
    assert result.score == 60
    out = edited(result, entity)
    assert out["x_opencti_score"] == 60
    # The extension score is what pycti's put_attribute_in_extension writes.
    expected = copy.deepcopy(entity)
    OpenCTIStix2.put_attribute_in_extension(expected, STIX_EXT_OCTI_SCO, "score", 60)
    assert out["extensions"][STIX_EXT_OCTI_SCO]["score"] == 60
    assert expected["extensions"][STIX_EXT_OCTI_SCO]["score"] == 60
    # Everything OpenCTI exported is kept, id included.
    for key in ("id", "object_marking_refs", "x_opencti_created_by_ref", "x_opencti_id"):
        assert out[key] == entity[key]
    kind = CASES[entity_type][4]
    references = out["extensions"][STIX_EXT_OCTI_SCO]["external_references"]
    assert len(references) == 1 and references[0]["source_name"] == "VirusTotal"
    assert out["external_references"] == references  # where pycti looks first
    gui = references[0]["url"]
    assert gui.startswith(f"https://www.virustotal.com/gui/{kind}/")
    assert gui.endswith(vt_object["id"])
    author = one(result, "identity")
    assert author["name"] == AUTHOR_NAME == "VirusTotal"
    assert author["identity_class"] == "organization"
    assert author["id"] == Identity.generate_id("VirusTotal", "organization")
    for obj in result.objects:
        if obj["id"] in (entity["id"], author["id"]):
            continue
        assert obj.get("created_by_ref", obj.get("x_opencti_created_by_ref")) == author["id"]
        if obj["type"] in ("indicator", "note", "relationship"):  # knowledge about the entity
            assert obj["object_marking_refs"] == [ef.TLP_AMBER]  # the entity's markings
        else:  # shared reference objects (resolved IPs, AS, Country)
            assert "object_marking_refs" not in obj


def test_shared_reference_objects_are_not_marked() -> None:
    """Re-sending a marking on an existing object adds it there: a TLP:AMBER entity must not make
    its Country, its AS, its resolutions or a public YARA rule AMBER for everyone."""
    result = enrich(ip(None), "IPv4-Addr", ef.vt_ip())
    assert "object_marking_refs" not in one(result, "location")
    assert "object_marking_refs" not in one(result, "autonomous-system")
    domain = ef.opencti_value_observable("Domain-Name", "evil.example.com")
    result = enrich(domain, "Domain-Name", ef.vt_domain())
    assert [a.get("object_marking_refs") for a in of_type(result, "ipv4-addr")] == [None, None]
    vt_object = ef.vt_file(yara=[(RULESET_ID, "Test_Rule")])
    result = enrich(
        ef.opencti_file(), "StixFile", vt_object, options(file_import_yara=True), RULESETS
    )
    yara = next(i for i in of_type(result, "indicator") if i["pattern_type"] == "yara")
    assert "object_marking_refs" not in yara
    assert one(result, "note")["object_marking_refs"] == [ef.TLP_AMBER]


def test_reference_joins_the_top_level_list_when_the_entity_has_one() -> None:
    existing = {"source_name": "ACME", "url": "https://acme.example/report"}
    entity = ef.opencti_value_observable("IPv4-Addr", "203.0.113.7", external_references=[existing])
    out = edited(enrich(entity, "IPv4-Addr", ef.vt_ip()), entity)
    urls = [ref["url"] for ref in out["external_references"]]
    assert urls == [existing["url"], "https://www.virustotal.com/gui/ip-address/203.0.113.7"]
    assert out["extensions"][STIX_EXT_OCTI_SCO]["external_references"] == out["external_references"]


def test_file_gets_hashes_size_names_and_labels() -> None:
    entity = ef.opencti_file(x_opencti_labels=["analyst-label"])
    vt_object = ef.vt_file(names=("invoice.exe", "payload.bin", "invoice.exe"))
    out = edited(enrich(entity, "StixFile", vt_object), entity)
    known = factories.hashes_for("sample")
    assert out["hashes"] == {
        "SHA-256": known["sha256"],
        "MD5": known["md5"],
        "SHA-1": known["sha1"],
    }
    assert out["size"] == 24_576
    assert out["name"] == "invoice.exe"
    extension = out["extensions"][STIX_EXT_OCTI_SCO]
    assert extension["additional_names"] == ["payload.bin"]
    assert out["x_opencti_additional_names"] == ["payload.bin"]
    # pycti reads the extension's labels before x_opencti_labels: the union is in both.
    assert extension["labels"] == ["analyst-label", "peexe", "long-sleeps"]
    assert out["x_opencti_labels"] == extension["labels"]


def test_file_keeps_its_name_and_its_own_hashes() -> None:
    other_md5 = "0" * 32
    entity = ef.opencti_file(hashes=("SHA-256",), name="known.exe")
    entity["hashes"]["MD5"] = other_md5
    result = enrich(entity, "StixFile", ef.vt_file())
    out = edited(result, entity)
    assert out["name"] == "known.exe"
    assert out["hashes"]["MD5"] == other_md5
    assert result.stats["hash_conflicts"] == 1
    assert out["extensions"][STIX_EXT_OCTI_SCO]["additional_names"] == [
        "invoice.exe",
        "payload.bin",
    ]


def test_artifact_gets_names_and_labels_but_no_file_only_properties() -> None:
    entity = ef.opencti_file(artifact=True)
    out = edited(enrich(entity, "Artifact", ef.vt_file()), entity)
    assert "size" not in out and "name" not in out
    assert out["extensions"][STIX_EXT_OCTI_SCO]["additional_names"] == [
        "invoice.exe",
        "payload.bin",
    ]
    assert out["extensions"][STIX_EXT_OCTI_SCO]["labels"] == ["peexe", "long-sleeps"]
    assert out["x_opencti_labels"] == ["peexe", "long-sleeps"]


def test_unsupported_type_or_entity_without_id_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="Email-Addr"):
        build_enrichment(ef.opencti_file(), "Email-Addr", ef.vt_file(), DEFAULTS)
    with pytest.raises(ValueError, match="id"):
        build_enrichment({"type": "file"}, "StixFile", ef.vt_file(), DEFAULTS)


# -- score -------------------------------------------------------------------------------------


def score_of(entity: dict, vt_object: dict, **opts: Any) -> tuple[EnrichmentResult, dict]:
    result = enrich(entity, "IPv4-Addr", vt_object, options(**opts))
    return result, edited(result, entity)


def ip(score: int | None) -> dict[str, Any]:
    return ef.opencti_value_observable("IPv4-Addr", "203.0.113.7", score=score)


def test_score_is_the_ratio_of_malicious_among_decisive_engines() -> None:
    # round(100 * 7 / (7 + 10 + 3)) = 35; suspicious and timeouts do not count.
    vt_object = ef.vt_ip(malicious=7, harmless=10, undetected=3)
    vt_object["attributes"]["last_analysis_stats"].update(suspicious=9, timeout=4)
    result, out = score_of(ip(None), vt_object)
    assert result.score == out["x_opencti_score"] == 35


def test_gti_threat_score_wins_over_the_ratio() -> None:
    result, out = score_of(ip(None), ef.vt_ip(malicious=7, harmless=10, undetected=3, gti_score=90))
    assert result.score == out["x_opencti_score"] == 90
    note = one(result, "note")
    assert "VirusTotal score: 90 (GTI threat score)." in note["content"]


@pytest.mark.parametrize("empty", [None, "", {}, [], -1, 101, float("nan")])
def test_empty_or_bad_gti_score_falls_back_to_the_ratio(empty: Any) -> None:
    vt_object = ef.vt_ip(malicious=7, harmless=10, undetected=3, gti_score=1)
    vt_object["attributes"]["gti_assessment"]["threat_score"]["value"] = empty
    result, _ = score_of(ip(None), vt_object)
    assert result.score == 35
    del vt_object["attributes"]["gti_assessment"]["threat_score"]
    assert score_of(ip(None), vt_object)[0].score == 35


def test_no_stats_and_no_gti_leave_the_score_alone() -> None:
    vt_object = ef.vt_ip()
    vt_object["attributes"]["last_analysis_stats"] = {"malicious": 0, "harmless": 0}
    result, out = score_of(ip(80), vt_object)
    assert result.score is None and result.stats["no_score"] == 1
    assert out["x_opencti_score"] == 80 and "score" not in out["extensions"][STIX_EXT_OCTI_SCO]


@pytest.mark.parametrize("gti_score", [None, 20])  # the ratio (35) or GTI: both are protected
def test_lower_score_never_replaces_a_higher_one_when_told_so(gti_score: int | None) -> None:
    vt_object = ef.vt_ip(malicious=7, harmless=10, undetected=3, gti_score=gti_score)
    vt_score = 35 if gti_score is None else gti_score
    result, out = score_of(ip(80), vt_object, replace_with_lower_score=False)
    assert result.score is None and result.stats["score_kept"] == 1
    assert out["x_opencti_score"] == 80
    assert "score" not in out["extensions"][STIX_EXT_OCTI_SCO]
    score_note = next(n for n in of_type(result, "note") if n["abstract"] == "VirusTotal score")
    assert f"VirusTotal score: {vt_score}" in score_note["content"]
    assert "existing score 80 was kept" in score_note["content"]
    # The existing score is also found in the extension, where OpenCTI may export it.
    entity = ip(None)
    entity["extensions"] = {STIX_EXT_OCTI_SCO: {"score": 80}}
    result, out = score_of(entity, vt_object, replace_with_lower_score=False)
    assert result.score is None and out["extensions"][STIX_EXT_OCTI_SCO]["score"] == 80


def test_lower_score_replaces_by_default_and_higher_always() -> None:
    vt_object = ef.vt_ip(malicious=7, harmless=10, undetected=3, gti_score=20)
    assert score_of(ip(80), vt_object)[0].score == 20
    higher = ef.vt_ip(gti_score=95)
    result, out = score_of(ip(80), higher, replace_with_lower_score=False)
    assert result.score == out["x_opencti_score"] == 95 and result.stats["score_kept"] == 0
    assert not [n for n in of_type(result, "note") if n["abstract"] == "VirusTotal score"]


# -- detection indicators ----------------------------------------------------------------------


@pytest.mark.parametrize("entity_type", list(CASES))
def test_indicator_pattern_type_validity_and_ids(entity_type: str) -> None:
    entity, vt_object = case(entity_type, malicious=12, harmless=0, undetected=8)
    prefix = {"StixFile": "file", "Artifact": "file", "IPv4-Addr": "ip", "Url": "url"}.get(
        entity_type, "domain"
    )
    opts = options(**{f"{prefix}_indicator_valid_minutes": 90, f"{prefix}_indicator_detect": False})
    result = enrich(entity, entity_type, vt_object, opts)
    indicator = one(result, "indicator")
    _, _, pattern, main_type, _ = CASES[entity_type]
    pattern = pattern.format(sha256=SHA256)
    assert indicator["pattern"] == pattern
    assert indicator["id"] == Indicator.generate_id(pattern)
    assert indicator["x_opencti_main_observable_type"] == main_type
    assert indicator["x_opencti_detection"] is False
    assert indicator["x_opencti_score"] == 60
    assert indicator["valid_from"] == ANALYSED
    assert indicator["valid_until"] == "2025-11-20T11:30:00.000Z"  # + 90 minutes, not days
    assert indicator["created_by_ref"] == Identity.generate_id("VirusTotal", "organization")
    assert indicator["external_references"][0]["source_name"] == "VirusTotal"
    rel_id = StixCoreRelationship.generate_id("based-on", indicator["id"], entity["id"])
    assert (indicator["id"], "based-on", entity["id"]) in relations(result)
    assert rel_id in {r["id"] for r in of_type(result, "relationship")}
    # stix2 parses the pattern (the Hostname one included).
    stix2.parse(indicator, allow_custom=True)


def test_default_validity_is_2880_minutes() -> None:
    indicator = one(enrich(*file_case()), "indicator")
    start = datetime(2025, 11, 20, 10, tzinfo=UTC)
    until = (start + timedelta(minutes=2880)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert indicator["valid_until"] == until == "2025-11-22T10:00:00.000Z"
    assert indicator["x_opencti_detection"] is True


@pytest.mark.parametrize(
    ("malicious", "threshold", "created"),
    [(9, 10, False), (10, 10, True), (11, 10, True), (50, 0, False), (1, 1, True)],
)
def test_indicator_threshold(malicious: int, threshold: int, created: bool) -> None:
    entity = ef.opencti_value_observable("Url", URL)
    vt_object = ef.vt_url(URL, malicious=malicious)
    result = enrich(entity, "Url", vt_object, options(url_indicator_create_positives=threshold))
    assert len(detection_indicators(result)) == int(created)
    assert result.stats["indicators"] == int(created)


def test_each_type_uses_its_own_threshold() -> None:
    opts = options(
        file_indicator_create_positives=100,
        ip_indicator_create_positives=1,
        domain_indicator_create_positives=100,
        url_indicator_create_positives=100,
    )
    for entity_type in CASES:
        entity, vt_object = case(entity_type)
        expected = 1 if entity_type == "IPv4-Addr" else 0
        assert len(detection_indicators(enrich(entity, entity_type, vt_object, opts))) == expected


def test_no_indicator_without_an_analysis_date_or_past_year_9999() -> None:
    vt_object = ef.vt_ip()
    for key in ("last_analysis_date",):
        del vt_object["attributes"][key]
    result = enrich(ip(None), "IPv4-Addr", vt_object)
    assert detection_indicators(result) == [] and result.stats["invalid_values"] >= 1
    late = ef.vt_ip(analysis_date=253_402_300_000)
    indicator = one(enrich(ip(None), "IPv4-Addr", late), "indicator")
    assert "valid_until" not in indicator  # + 2880 minutes cannot be spelled in STIX


# -- dates: the request's and VT's -------------------------------------------------------------

# A report VT analysed two years before the enrichment request.
OLD_ANALYSIS = ef.ANALYSIS_DATE - 2 * 365 * 86_400
OLD_STAMP = "2023-11-21T10:00:00.000Z"
REQUESTED = datetime(2025, 11, 20, 9, 30, 15, 250_000, tzinfo=UTC)
REQUESTED_STAMP = "2025-11-20T09:30:15.250Z"


def instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def prefix_of(entity_type: str) -> str:
    return {"StixFile": "file", "Artifact": "file", "IPv4-Addr": "ip", "Url": "url"}.get(
        entity_type, "domain"
    )


@pytest.mark.parametrize("entity_type", list(CASES))
def test_old_report_indicator_is_valid_from_the_request_for_the_configured_minutes(
    entity_type: str,
) -> None:
    entity, vt_object = case(entity_type, analysis_date=OLD_ANALYSIS)
    opts = options(**{f"{prefix_of(entity_type)}_indicator_valid_minutes": 90})
    result = enrich(entity, entity_type, vt_object, opts, requested_at=REQUESTED)
    indicator = one(result, "indicator")
    assert indicator["valid_from"] == indicator["modified"] == REQUESTED_STAMP
    assert instant(indicator["valid_until"]) - instant(indicator["valid_from"]) == timedelta(
        minutes=90
    )
    assert instant(indicator["valid_from"]) <= REQUESTED < instant(indicator["valid_until"])
    # What VT observed keeps VT's date: the verdict's analysis, its note, the relationship.
    assert indicator["created"] == OLD_STAMP
    assert one(result, "note")["created"] == OLD_STAMP
    based_on = next(
        r for r in of_type(result, "relationship") if r["source_ref"] == indicator["id"]
    )
    assert based_on["created"] == based_on["modified"] == OLD_STAMP
    stix2.parse(indicator, allow_custom=True)  # valid_until > valid_from, created <= modified


def test_without_a_request_time_the_indicator_falls_back_to_vt_dates() -> None:
    entity, vt_object = case("IPv4-Addr", analysis_date=OLD_ANALYSIS)
    indicator = one(enrich(entity, "IPv4-Addr", vt_object), "indicator")
    assert indicator["valid_from"] == indicator["created"] == indicator["modified"] == OLD_STAMP
    assert indicator["valid_until"] == "2023-11-23T10:00:00.000Z"


def test_same_request_same_bytes_whatever_its_time_zone() -> None:
    """A re-executed run passes the same request time again: the same bytes (enrich() itself
    builds twice); its zone is only a spelling; a millisecond later is another version."""
    entity, opts = ef.opencti_file(), options(file_import_yara=True)
    vt_object = ef.vt_file(analysis_date=OLD_ANALYSIS, yara=[(RULESET_ID, "Test_Rule")])

    def replay(requested_at: datetime) -> bytes:
        result = enrich(copy.deepcopy(entity), "StixFile", vt_object, opts, RULESETS, requested_at)
        return serialize_bundle(enrichment_bundle(ef.context_objects(entity), result.objects))

    reference = replay(REQUESTED)
    paris = timezone(timedelta(hours=1))
    assert replay(REQUESTED.astimezone(paris)) == reference
    assert replay(REQUESTED + timedelta(milliseconds=1)) != reference


def test_later_request_moves_validity_forward_on_the_same_indicator_and_notes() -> None:
    """Re-enriching the same VT analysis later: one Indicator re-validated, nothing else new."""
    entity, vt_object = case("Url", analysis_date=OLD_ANALYSIS)
    first = enrich(entity, "Url", vt_object, requested_at=REQUESTED)
    later_at = REQUESTED + timedelta(days=3)
    later = enrich(copy.deepcopy(entity), "Url", vt_object, requested_at=later_at)
    assert [o["id"] for o in later.objects] == [o["id"] for o in first.objects]
    old, new = one(first, "indicator"), one(later, "indicator")
    assert instant(new["valid_from"]) == later_at
    assert instant(new["valid_until"]) - instant(old["valid_until"]) == timedelta(days=3)
    # OpenCTI takes a re-sent `modified` only when it is later than the stored one.
    assert new["modified"] > old["modified"] and new["created"] == old["created"]
    changed = {"valid_from", "valid_until", "modified"}
    assert {k: v for k, v in new.items() if k not in changed} == {
        k: v for k, v in old.items() if k not in changed
    }
    others = [o for o in first.objects if o["id"] != old["id"]]
    assert others == [o for o in later.objects if o["id"] != new["id"]]
    assert one(later, "note")["id"] == one(first, "note")["id"]


def test_new_analysis_later_adds_a_note_and_keeps_the_indicator() -> None:
    entity, _ = case("Domain-Name")
    first = enrich(
        entity, "Domain-Name", ef.vt_domain(analysis_date=OLD_ANALYSIS), requested_at=REQUESTED
    )
    fresh = ef.vt_domain(analysis_date=ef.ANALYSIS_DATE + 86_400)
    # the request (11-21 09:30) before the analysis (11-21 10:00), as for a file uploaded on it
    later = enrich(entity, "Domain-Name", fresh, requested_at=REQUESTED + timedelta(days=1))
    assert one(later, "indicator")["id"] == one(first, "indicator")["id"]
    assert one(later, "note")["id"] != one(first, "note")["id"]
    late = one(later, "indicator")  # created never after modified: at the request
    assert late["created"] == late["valid_from"] == late["modified"] == "2025-11-21T09:30:15.250Z"


def test_request_time_dates_an_indicator_vt_gave_no_analysis_date() -> None:
    vt_object = ef.vt_ip()
    for key in ("last_analysis_date", "last_submission_date", "last_modification_date"):
        vt_object["attributes"].pop(key, None)
    result = enrich(ip(None), "IPv4-Addr", vt_object, requested_at=REQUESTED)
    indicator = one(result, "indicator")
    assert indicator["valid_from"] == indicator["created"] == REQUESTED_STAMP


def test_request_time_must_be_timezone_aware() -> None:
    entity, vt_object = case("IPv4-Addr")
    naive = datetime(2025, 11, 20, 9, 30)
    with pytest.raises(ValueError, match="time zone"):
        build_enrichment(entity, "IPv4-Addr", vt_object, DEFAULTS, requested_at=naive)
    with pytest.raises(ValueError, match="time zone"):
        build_indicator_enrichment(ef.opencti_indicator(), lookups(), DEFAULTS, requested_at=naive)


def test_request_validity_past_year_9999_has_no_valid_until() -> None:
    entity, vt_object = case("IPv4-Addr")
    end = datetime(9999, 12, 31, 12, tzinfo=UTC)
    indicator = one(enrich(entity, "IPv4-Addr", vt_object, requested_at=end), "indicator")
    assert indicator["valid_from"] == "9999-12-31T12:00:00.000Z"
    assert "valid_until" not in indicator


def test_yara_indicator_is_valid_from_the_request_and_created_at_the_rule_date() -> None:
    vt_object = ef.vt_file(analysis_date=OLD_ANALYSIS, yara=[(RULESET_ID, "Test_Rule")])
    opts = options(file_import_yara=True)
    result = enrich(ef.opencti_file(), "StixFile", vt_object, opts, RULESETS, REQUESTED)
    yara = next(i for i in of_type(result, "indicator") if i["pattern_type"] == "yara")
    assert yara["valid_from"] == yara["modified"] == REQUESTED_STAMP
    assert yara["created"] == "2025-01-15T00:00:00.000Z"  # the rule's date
    match = next(r for r in of_type(result, "relationship") if r["target_ref"] == yara["id"])
    assert match["created"] == OLD_STAMP  # VT saw the match in its analysis
    # Through an Indicator's values too.
    indicator = ef.opencti_indicator()
    values = [("StixFile", SHA256, vt_object)]
    through = build_indicator_enrichment(indicator, values, opts, RULESETS, requested_at=REQUESTED)
    assert [i for i in of_type(through, "indicator") if i["pattern_type"] == "yara"] == [yara]


# -- crowdsourced YARA -------------------------------------------------------------------------


def test_yara_indicators_only_when_asked() -> None:
    vt_object = ef.vt_file(yara=[(RULESET_ID, "Test_Rule")])
    off = enrich(ef.opencti_file(), "StixFile", vt_object, DEFAULTS, RULESETS)
    assert [i for i in of_type(off, "indicator") if i["pattern_type"] == "yara"] == []

    entity = ef.opencti_file()
    on = enrich(entity, "StixFile", vt_object, options(file_import_yara=True), RULESETS)
    yara = [i for i in of_type(on, "indicator") if i["pattern_type"] == "yara"]
    assert len(yara) == 1 and on.stats["yara_indicators"] == 1
    rule = find_rule(RULESETS[RULESET_ID]["attributes"]["rules"], "Test_Rule")
    assert rule is not None
    assert yara[0]["pattern"] == rule.source
    assert "Other_Rule" not in yara[0]["pattern"]
    assert yara[0]["id"] == Indicator.generate_id(rule.source)
    assert yara[0]["name"] == "Test_Rule"
    assert yara[0]["valid_from"] == "2025-01-15T00:00:00.000Z"  # the rule's date
    assert yara[0]["x_opencti_main_observable_type"] == "StixFile"
    assert (entity["id"], "related-to", yara[0]["id"]) in relations(on)


def test_yara_problems_are_counted_not_raised() -> None:
    vt_object = ef.vt_file(
        yara=[(RULESET_ID, "No_Such_Rule"), ("unfetched", "Test_Rule"), ("broken", "X")]
    )
    vt_object["attributes"]["crowdsourced_yara_results"] += ["not an object", {"rule_name": 3}]
    rulesets = {**RULESETS, "broken": ef.vt_yara_ruleset("broken", "rule {{{ nope")}
    result = enrich(
        ef.opencti_file(), "StixFile", vt_object, options(file_import_yara=True), rulesets
    )
    assert result.stats["yara_indicators"] == 0
    assert result.stats["yara_rule_missing"] == 1
    assert result.stats["yara_ruleset_missing"] == 1
    assert result.stats["yara_parse_error"] == 1
    assert result.stats["invalid_values"] >= 2


# -- relationships -----------------------------------------------------------------------------


def test_ip_belongs_to_its_autonomous_system_and_is_located_in_its_country() -> None:
    entity = ip(None)
    result = enrich(entity, "IPv4-Addr", ef.vt_ip(asn=64500, country="nl"))
    system = one(result, "autonomous-system")
    expected = stix2.AutonomousSystem(number=64500, name="Example Hosting B.V.", rir="RIPE NCC")
    assert system["id"] == expected.id
    assert (system["number"], system["name"], system["rir"]) == (64500, expected.name, "RIPE NCC")
    location = one(result, "location")
    assert location["name"] == "Netherlands" and location["country"] == "NL"
    assert location["x_opencti_location_type"] == "Country"
    assert location["id"] == Location.generate_id("Netherlands", "Country")
    assert relations(result) >= {
        (entity["id"], "belongs-to", system["id"]),
        (entity["id"], "located-at", location["id"]),
    }
    belongs = next(r for r in of_type(result, "relationship") if r["target_ref"] == system["id"])
    assert belongs["id"] == StixCoreRelationship.generate_id(
        "belongs-to", entity["id"], system["id"]
    )
    assert belongs["created"] == ANALYSED


def test_ip_relationships_off_or_unusable() -> None:
    off = enrich(ip(None), "IPv4-Addr", ef.vt_ip(), options(ip_add_relationships=False))
    assert of_type(off, "autonomous-system") == of_type(off, "location") == []
    bad = enrich(ip(None), "IPv4-Addr", ef.vt_ip(asn="not a number", country="ZZ"))
    assert of_type(bad, "autonomous-system") == of_type(bad, "location") == []
    assert bad.stats["invalid_values"] == 2
    huge = enrich(ip(None), "IPv4-Addr", ef.vt_ip(asn=2**40, country=["NL"]))
    assert of_type(huge, "autonomous-system") == of_type(huge, "location") == []


@pytest.mark.parametrize("entity_type", ["Domain-Name", "Hostname"])
def test_domain_and_hostname_resolve_to_their_a_records(entity_type: str) -> None:
    entity, _ = case(entity_type)
    vt_object = ef.vt_domain(
        a_records=("198.51.100.1", "198.51.100.2", "198.51.100.1", "999.1.1.1")
    )
    result = enrich(entity, entity_type, vt_object)
    addresses = of_type(result, "ipv4-addr")
    assert sorted(a["value"] for a in addresses) == ["198.51.100.1", "198.51.100.2"]
    for address in addresses:
        assert address["id"] == stix2.IPv4Address(value=address["value"]).id
        assert "x_opencti_score" not in address  # the domain's score is not the address's
        assert (entity["id"], "resolves-to", address["id"]) in relations(result)
    assert result.stats["invalid_values"] == 1
    if entity_type == "Hostname":
        assert entity["id"] == CustomObservableHostname(value="evil.example.com").id
    off = enrich(entity, entity_type, vt_object, options(domain_add_relationships=False))
    assert of_type(off, "ipv4-addr") == []


# -- notes -------------------------------------------------------------------------------------


def table_rows(content: str, heading: str) -> list[list[str]]:
    """The cells of the table under `## heading` (header row first)."""
    section = content.split(f"## {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in section.split("\n") if line and not line.startswith("|---")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_file_full_report_note() -> None:
    entity = ef.opencti_file()
    vt_object = ef.vt_file(malicious=3, undetected=2)
    result = enrich(entity, "StixFile", vt_object)
    note = one(result, "note")
    assert note["abstract"] == "VirusTotal full report"
    assert note["object_refs"] == [entity["id"]]
    assert note["created"] == ANALYSED
    assert note["id"] == Note.generate_id(ANALYSED, note["content"])
    stats = table_rows(note["content"], "Last analysis stats")
    assert stats == [
        [
            "Total",
            "Malicious",
            "Suspicious",
            "Undetected",
            "Harmless",
            "Timeout",
            "Confirmed timeout",
            "Failure",
            "Unsupported",
        ],
        ["5", "3", "0", "2", "0", "0", "0", "0", "0"],
    ]
    engines = table_rows(note["content"], "Last analysis results")
    assert engines[0] == ["Engine name", "Engine version", "Method", "Category", "Result"]
    assert ["ESET-NOD32", "1.0", "blacklist", "malicious", "Trojan.Generic.2"] in engines
    assert ["BitDefender", "1.0", "blacklist", "undetected", "N/A"] in engines
    assert "## Attributes" not in note["content"]
    off = enrich(entity, "StixFile", vt_object, options(file_create_note_full_report=False))
    assert of_type(off, "note") == []


@pytest.mark.parametrize("entity_type", ["IPv4-Addr", "Domain-Name", "Hostname", "Url"])
def test_network_note_has_stats_engines_and_categories(entity_type: str) -> None:
    entity, vt_object = case(entity_type, malicious=1, harmless=1, undetected=1)
    note = one(enrich(entity, entity_type, vt_object), "note")
    assert note["abstract"] == "VirusTotal results"
    content = note["content"]
    assert table_rows(content, "Last analysis stats") == [
        ["Total", "Malicious", "Suspicious", "Undetected", "Harmless", "Timeout"],
        ["3", "1", "0", "1", "1", "0"],
    ]
    engines = table_rows(content, "Last analysis results")
    assert engines[0] == ["Engine name", "Method", "Category", "Result"]
    assert ["Microsoft", "blacklist", "harmless", "clean"] in engines
    assert table_rows(content, "Categories") == [
        ["Vendor", "Category"],
        ["Forcepoint ThreatSeeker", "malicious web sites"],
        ["Sophos", "phishing"],
    ]


@pytest.mark.parametrize("entity_type", list(CASES))
def test_include_attributes_in_note(entity_type: str) -> None:
    entity, vt_object = case(entity_type)
    result = enrich(entity, entity_type, vt_object, options(include_attributes_in_note=True))
    note = next(n for n in of_type(result, "note") if n["abstract"] != "VirusTotal score")
    rows = table_rows(note["content"], "Attributes")
    assert rows[0] == ["Attribute", "Value"]
    assert ["Reputation", str(vt_object["attributes"]["reputation"])] in rows
    expected = {
        "StixFile": ["File type", "Win32 EXE"],
        "Artifact": ["First submission", "2025-10-21T10:00:00Z"],
        "IPv4-Addr": ["Autonomous system label", "Example Hosting B.V."],
        "Domain-Name": ["Registrar", "NameCheap, Inc."],
        "Hostname": ["Creation date", "2025-10-31T10:00:00Z"],
        "Url": ["Final URL", URL.replace("\\", "\\\\")],
    }[entity_type]
    assert expected in rows


def test_same_analysis_same_note_new_analysis_new_note() -> None:
    entity = ip(None)
    first = one(enrich(entity, "IPv4-Addr", ef.vt_ip()), "note")
    again = one(enrich(copy.deepcopy(entity), "IPv4-Addr", ef.vt_ip()), "note")
    assert first["id"] == again["id"]
    later = one(
        enrich(entity, "IPv4-Addr", ef.vt_ip(analysis_date=ef.ANALYSIS_DATE + 3600)), "note"
    )
    assert later["id"] != first["id"] and later["created"] == "2025-11-20T11:00:00.000Z"
    # Same VT numbers for another IP: another note.
    other_entity = ef.opencti_value_observable("IPv4-Addr", "203.0.113.8")
    other = one(enrich(other_entity, "IPv4-Addr", ef.vt_ip("203.0.113.8")), "note")
    assert other["id"] != first["id"]


def test_hostile_engine_results_cannot_break_the_tables() -> None:
    vt_object = ef.vt_file(malicious=2, undetected=1)
    results = vt_object["attributes"]["last_analysis_results"]
    results["Evil | Engine\n| x | y | z | w |"] = {
        "category": "malicious`",
        "engine_name": "Evil | Engine\n| x | y | z | w |",
        "engine_version": "<img src=x onerror=alert(1)>",
        "method": "[link](javascript:alert(1))",
        "result": "Trojan|Win32\r\n## heading\x00\u202e",
    }
    results["NotAnObject"] = ["category", "malicious"]
    result = enrich(ef.opencti_file(), "StixFile", vt_object)
    content = one(result, "note")["content"]
    engines = table_rows(content, "Last analysis results")
    assert all(len(row) == 5 for row in engines)
    assert len(engines) == 1 + 4  # header, three engines, the hostile one; the non-object dropped
    assert "<img" not in content and "\x00" not in content and "\u202e" not in content
    assert "\n## heading" not in content
    evil = next(row for row in engines if row[0].startswith("Evil"))
    assert evil == [
        "Evil \\| Engine \\| x \\| y \\| z \\| w \\|",
        "&lt;img src=x onerror=alert(1)&gt;",
        "\\[link\\](javascript:alert(1))",
        "malicious\\`",
        "Trojan\\|Win32 ## heading",
    ]
    assert result.stats["invalid_values"] == 1


# -- Indicator entities ------------------------------------------------------------------------


def lookups() -> list[tuple[str, str, dict | None]]:
    return [
        ("IPv4-Addr", "203.0.113.7", ef.vt_ip(malicious=7, harmless=10, undetected=3)),  # 35
        ("Domain-Name", "evil.example.com", ef.vt_domain(gti_score=70)),
        ("StixFile", SHA256.upper(), ef.vt_file(malicious=1, undetected=19)),  # 5
        ("Url", "http://unknown.example/", None),
        ("IPv4-Addr", "not an address", None),
        ("Email-Addr", "a@example.com", None),
    ]


def indicator_enrichment(
    indicator: dict[str, Any], opts: EnrichmentMappingOptions = DEFAULTS
) -> EnrichmentResult:
    before = copy.deepcopy(indicator)
    result = build_indicator_enrichment(indicator, lookups(), opts)
    assert indicator == before
    assert validate_bundle(enrichment_bundle(ef.context_objects(indicator), result.objects)) == []
    assert result.stats["section_errors"] == 0
    return result


def test_indicator_enrichment_builds_observables_and_relates_from_them() -> None:
    indicator = ef.opencti_indicator(score=40)
    result = indicator_enrichment(indicator)
    ip_id = stix2.IPv4Address(value="203.0.113.7").id
    domain_id = stix2.DomainName(value="evil.example.com").id
    file_id = stix2.File(hashes={"SHA-256": SHA256}).id
    url_id = stix2.URL(value="http://unknown.example/").id
    based_on = {
        (indicator["id"], "based-on", target) for target in (ip_id, domain_id, file_id, url_id)
    }
    assert based_on <= relations(result)
    system = one(result, "autonomous-system")["id"]
    location = one(result, "location")["id"]
    assert (ip_id, "belongs-to", system) in relations(result)
    assert (ip_id, "located-at", location) in relations(result)
    resolved = {a["id"] for a in of_type(result, "ipv4-addr")} - {ip_id}
    assert {(domain_id, "resolves-to", target) for target in resolved} <= relations(result)
    # Nothing starts at the Indicator but its based-on relationships.
    assert {r for r in relations(result) if r[0] == indicator["id"]} == based_on
    assert result.stats["lookups"] == 6
    assert result.stats["lookups_not_found"] == 1
    assert result.stats["invalid_observable_values"] == 2
    # No detection Indicator per value: the entity already is the Indicator.
    assert [i["id"] for i in of_type(result, "indicator")] == [indicator["id"]]
    for note in of_type(result, "note"):
        assert indicator["id"] in note["object_refs"] and len(note["object_refs"]) == 2
    out = edited(result, indicator)
    references = out["extensions"][STIX_EXT_OCTI]["external_references"]
    assert len(references) == 3 and out["external_references"] == references


def test_indicator_score_is_the_highest_of_its_values_decided_once() -> None:
    indicator = ef.opencti_indicator(score=40)
    result = indicator_enrichment(indicator)
    out = edited(result, indicator)
    assert result.score == out["x_opencti_score"] == 70  # the domain's GTI score
    assert out["extensions"][STIX_EXT_OCTI]["score"] == 70
    observables = {o["id"]: o for o in result.objects if o["type"] in ("ipv4-addr", "file")}
    assert observables[stix2.IPv4Address(value="203.0.113.7").id]["x_opencti_score"] == 35
    assert observables[stix2.File(hashes={"SHA-256": SHA256}).id]["x_opencti_score"] == 5
    # Same values in another order: same score.
    reordered = build_indicator_enrichment(indicator, list(reversed(lookups())), DEFAULTS)
    assert reordered.score == 70


def test_indicator_higher_score_kept_when_told_so() -> None:
    indicator = ef.opencti_indicator(score=90)
    result = indicator_enrichment(indicator, options(replace_with_lower_score=False))
    assert result.score is None and edited(result, indicator)["x_opencti_score"] == 90
    # Observables whose OpenCTI score is unknown here are sent without one.
    assert all("x_opencti_score" not in o for o in result.objects if o["type"] == "ipv4-addr")
    lower = indicator_enrichment(
        ef.opencti_indicator(score=10), options(replace_with_lower_score=False)
    )
    assert lower.score == 70


# -- playbooks ---------------------------------------------------------------------------------


def test_playbook_bundle_is_the_incoming_bundle_with_the_edited_entity_and_new_objects() -> None:
    entity = ip(50)
    incoming = ef.playbook_incoming(entity)
    frozen = copy.deepcopy(incoming)
    result = enrich(entity, "IPv4-Addr", ef.vt_ip())
    answer = playbook_bundle(incoming, result.objects)
    assert incoming == frozen
    assert validate_bundle(answer) == []
    by_id = {obj["id"]: obj for obj in answer["objects"]}
    assert set(by_id) == {obj["id"] for obj in incoming["objects"]} | {
        obj["id"] for obj in result.objects
    }
    assert by_id[entity["id"]] == edited(result, entity)
    assert by_id[ef.organization()["id"]] == ef.organization()
    assert Counter(obj["id"] for obj in answer["objects"]).most_common(1)[0][1] == 1
    assert serialize_bundle(answer) == serialize_bundle(playbook_bundle(incoming, result.objects))


def test_unchanged_playbook_bundle_passes_through() -> None:
    incoming = ef.playbook_incoming(ip(50))
    passed = unchanged_playbook_bundle(incoming)
    assert passed == incoming and passed is not incoming
    passed["objects"].clear()
    assert incoming["objects"]


# -- determinism -------------------------------------------------------------------------------


def test_same_inputs_same_bytes_whatever_the_order_of_vt_keys() -> None:
    entity = ef.opencti_file()
    vt_object = ef.vt_file(yara=[(RULESET_ID, "Test_Rule")])
    shuffled = copy.deepcopy(vt_object)
    attrs = shuffled["attributes"]
    attrs["last_analysis_results"] = dict(reversed(list(attrs["last_analysis_results"].items())))
    shuffled["attributes"] = dict(reversed(list(attrs.items())))
    opts = options(file_import_yara=True, include_attributes_in_note=True)
    first = build_enrichment(entity, "StixFile", vt_object, opts, RULESETS)
    second = build_enrichment(entity, "StixFile", shuffled, opts, RULESETS)
    assert serialize_bundle(enrichment_bundle([], first.objects)) == serialize_bundle(
        enrichment_bundle([], second.objects)
    )
    assert [obj["id"] for obj in first.objects] == sorted(obj["id"] for obj in first.objects)


# -- hostile input -----------------------------------------------------------------------------


HOSTILE_VALUES: list[Any] = [
    None,
    float("inf"),
    float("-inf"),
    float("nan"),
    10**30,
    -5,
    True,
    [],
    {},
    [1, {"a": 2}],
    {"x": [1]},
    "x" * 100_000,
    "a|b\n`c`<script>",
    "\u202egpj.exe",
    "\x00\x07",
    1e308,
    "",
    3.5,
    "NaN",
    "lone \ud800 surrogate",
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found: list[tuple] = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _set(value: Any, path: tuple, new: Any) -> None:
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


@pytest.mark.parametrize("entity_type", list(CASES))
def test_hostile_vt_data_never_raises(entity_type: str) -> None:
    rng = random.Random(f"hostile:{entity_type}")
    opts = options(file_import_yara=True, include_attributes_in_note=True)
    is_file = entity_type in ("StixFile", "Artifact")
    entity, base = case(entity_type, **({"yara": [(RULESET_ID, "Test_Rule")]} if is_file else {}))
    for _ in range(50):
        vt_object = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            paths = _paths(vt_object)
            if paths:
                _set(vt_object, rng.choice(paths), copy.deepcopy(rng.choice(HOSTILE_VALUES)))
        enrich(entity, entity_type, vt_object, opts, RULESETS)


def test_hostile_values_are_dropped_and_counted() -> None:
    vt_object = ef.vt_file(
        names=("ok.exe", "x" * 100_000, "bad\nname.exe", "\u202egpj.exe", 42),  # type: ignore[arg-type]
        tags=("peexe", "<script>alert(1)</script>", "tag\nnewline", "x" * 300, None),  # type: ignore[arg-type]
    )
    attrs = vt_object["attributes"]
    attrs["last_analysis_stats"].update(malicious=float("inf"), harmless=-3, undetected=10**30)
    attrs["size"] = float("nan")
    entity = ef.opencti_file()
    result = enrich(entity, "StixFile", vt_object)
    out = edited(result, entity)
    assert out["name"] == "ok.exe"
    assert "additional_names" not in out["extensions"][STIX_EXT_OCTI_SCO]
    assert out["extensions"][STIX_EXT_OCTI_SCO]["labels"] == ["peexe", "<script>alert(1)</script>"]
    assert "size" not in out
    assert result.score is None  # no usable count left, and no GTI
    # 4 names, 3 tags (None is absent, not hostile), 3 counts, the size.
    assert result.stats["invalid_values"] == 4 + 2 + 3 + 1


@pytest.mark.parametrize("vt_object", [None, [], "text", {"attributes": []}, {"id": "x"}])
def test_vt_data_that_is_not_an_object_maps_nothing(vt_object: Any) -> None:
    entity = ip(50)
    result = enrich(entity, "IPv4-Addr", vt_object)
    assert result.stats["invalid_vt_object"] == 1 and result.score is None
    assert {obj["type"] for obj in result.objects} == {"ipv4-addr", "identity"}
    assert edited(result, entity) == entity


def test_realistic_emulator_objects_all_map_and_validate() -> None:
    corpus = generate_corpus(
        11, 120, datetime(2025, 11, 1, tzinfo=UTC), datetime(2025, 11, 3, tzinfo=UTC)
    )
    opts = options(file_import_yara=True, include_attributes_in_note=True)
    rulesets = dict(corpus.yara_rulesets)
    counts: Counter[str] = Counter()
    for sha256, vt_object in list(corpus.files.items())[:60]:
        entity = ef.opencti_file(seed="unused", hashes=())
        entity["hashes"] = {"SHA-256": sha256}
        result = enrich(entity, "StixFile", vt_object, opts, rulesets)
        counts.update({key: value for key, value in result.stats.items() if value})
    for collection, entity_type in (
        (corpus.ip_addresses, "IPv4-Addr"),
        (corpus.domains, "Domain-Name"),
        (corpus.urls, "Url"),
    ):
        for vt_object in collection.values():
            value = vt_object["attributes"].get("url") or vt_object["id"]
            entity = ef.opencti_value_observable(entity_type, value)
            result = enrich(entity, entity_type, vt_object, opts)
            counts.update({key: value for key, value in result.stats.items() if value})
    assert counts["notes"] > 0 and counts["indicators"] > 0 and counts["yara_indicators"] > 0
    assert counts["locations"] > 0 and counts["relationships"] > 0
    assert counts["yara_rule_missing"] == counts["yara_ruleset_missing"] == 0


def test_output_is_plain_json() -> None:
    result = enrich(*file_case())
    assert json.loads(json.dumps(result.objects)) == result.objects


def test_hostile_rulesets_are_counted_not_raised() -> None:
    vt_object = ef.vt_file(yara=[("a", "Test_Rule"), ("b", "Test_Rule"), ("c", "Test_Rule")])
    rulesets: dict[str, Any] = {
        "a": {"id": "a", "attributes": ["not", "an", "object"]},
        "b": {"id": "b", "attributes": {"rules": 42}},
        "c": "not a ruleset",
    }
    opts = options(file_import_yara=True)
    result = enrich(ef.opencti_file(), "StixFile", vt_object, opts, rulesets)
    assert result.stats["yara_indicators"] == 0
    assert result.stats["yara_parse_error"] == 2 and result.stats["yara_ruleset_missing"] == 1


# -- the VT readers the mapping relies on ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_763_632_800, 1_763_632_800),
        (1_763_632_800.7, 1_763_632_800),
        ("2025-11-20T10:00:00Z", 1_763_632_800),
        (float("inf"), None),
        (float("nan"), None),
        (10**30, None),
        ("9" * 40, None),
        ([], None),
        (True, None),
    ],
)
def test_safe_timestamp(value: Any, expected: int | None) -> None:
    assert vt.safe_timestamp(value) == expected


def test_analysis_counts_keep_only_sane_counts() -> None:
    item = {
        "attributes": {
            "last_analysis_stats": {
                "malicious": 3,
                "harmless": 2.0,
                "undetected": float("inf"),
                "suspicious": -1,
                "timeout": 10**30,
                "failure": True,
                "type-unsupported": 1.5,
            }
        }
    }
    assert vt.analysis_counts(item) == {"malicious": 3, "harmless": 2}
    assert vt.vt_score(vt.analysis_counts(item)) == 60
