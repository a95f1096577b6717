"""YARA Indicators of the live stream and their rulesets (pure): names, the compile check, and
Livehunt notifications of a managed ruleset mapped onto the Indicator it was made from."""

from typing import Any

from pycti import Indicator

from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.stix import build_livehunt_bundle, validate_bundle
from vt_pipeline.stix.hunting_rules import (
    OPENCTI_EXTENSION,
    compile_problem,
    feedback_objects,
    managed_indicator,
    marked_indicator,
    ruleset_name,
    yara_indicator,
)
from vt_pipeline_tests import factories

PATTERN = factories.yara_rule("Test_Rule") + "\n" + factories.yara_rule("Other_Rule", text="ELF")


def stream_data(pattern: str = PATTERN, **extension: Any) -> dict[str, Any]:
    """An Indicator as OpenCTI's live stream sends it."""
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": Indicator.generate_id(pattern),
        "name": "Analyst rule",
        "pattern": pattern,
        "pattern_type": "yara",
        "extensions": {OPENCTI_EXTENSION: {"id": "internal-1", "type": "Indicator", **extension}},
    }


def yara_items(result: Any) -> list[dict[str, Any]]:
    return [o for o in result.bundle["objects"] if o.get("pattern_type") == "yara"]


def test_a_stream_indicator_is_read_as_upstream_reads_it() -> None:
    indicator = yara_indicator(stream_data(detection=True, stix_ids=["indicator--old"]))
    assert indicator is not None and indicator.wanted and indicator.key == "internal-1"
    assert indicator.ids == {Indicator.generate_id(PATTERN), "indicator--old"}
    assert not yara_indicator({**stream_data(detection=True), "revoked": True}).wanted
    assert not yara_indicator(stream_data()).wanted  # no detection flag: off
    assert yara_indicator({**stream_data(), "pattern_type": "stix"}) is None
    assert yara_indicator({"type": "malware", "id": "malware--1"}) is None
    assert yara_indicator("not a dict") is None


def test_names_carry_the_indicator_and_rules_are_checked_with_plyara() -> None:
    indicator = yara_indicator(stream_data(detection=True))
    name = ruleset_name(indicator)
    assert name == f"Analyst rule [OpenCTI {indicator.id}]"
    assert marked_indicator(name) == indicator.id and marked_indicator("Analyst rule") is None
    long = yara_indicator({**stream_data(detection=True), "name": "x" * 500 + "\nnext line"})
    assert len(ruleset_name(long)) < 200 and "\n" not in ruleset_name(long)
    assert compile_problem(PATTERN) is None
    assert "cannot parse" in compile_problem("rule 9x { condition: true }")
    assert compile_problem("// only a comment") == "the pattern holds no YARA rule"


def test_feedback_is_the_indicator_with_its_link_or_a_note() -> None:
    indicator = yara_indicator(stream_data(detection=True))
    reference = {"source_name": "VirusTotal Livehunt", "url": "https://x", "external_id": "7"}
    (linked,) = feedback_objects(indicator, reference=reference)
    assert linked["id"] == Indicator.generate_id(linked["pattern"]) == indicator.id
    assert linked["external_references"] == [reference]
    objects = feedback_objects(indicator, problem="cannot parse")
    note = next(o for o in objects if o["type"] == "note")
    assert note["object_refs"] == [indicator.id] and "cannot parse" in note["content"]
    assert feedback_objects(indicator, problem="cannot parse") == objects  # same note id
    assert validate_bundle({"type": "bundle", "id": "bundle--1", "objects": objects}) == []


def test_a_managed_rulesets_notification_maps_onto_its_indicator() -> None:
    indicator = yara_indicator(stream_data(detection=True))
    managed = factories.hunting_ruleset("ruleset-1", PATTERN, name=ruleset_name(indicator))
    assert managed_indicator(managed["attributes"]) == (indicator.id, "Analyst rule")
    item = factories.file_notification(rule_name="Other_Rule")
    result = build_livehunt_bundle([item], {"ruleset-1": managed}, {}, LivehuntOptions())
    (yara,) = yara_items(result)
    assert yara["id"] == indicator.id and yara["pattern"] == PATTERN
    assert yara["name"] == "Analyst rule" and "description" not in yara
    assert validate_bundle(result.bundle) == []
    # edited on VT behind OpenCTI's back: the rules are no longer the Indicator's pattern,
    # so the rule alone is the Indicator, as for any ruleset
    edited = factories.hunting_ruleset(
        "ruleset-1", PATTERN + factories.yara_rule("Third"), name=ruleset_name(indicator)
    )
    assert managed_indicator(edited["attributes"]) is None
    result = build_livehunt_bundle([item], {"ruleset-1": edited}, {}, LivehuntOptions())
    (yara,) = yara_items(result)
    assert yara["id"] != indicator.id and yara["name"] == "Other_Rule"
    assert "Test_Rule" not in yara["pattern"]
