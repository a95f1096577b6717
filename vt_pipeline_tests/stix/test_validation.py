"""validate_bundle finds what OpenCTI would reject: unparseable objects, dangling references."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.stix import build_livehunt_bundle, common, validate_bundle
from vt_pipeline_tests import factories


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    item = factories.file_notification()
    rulesets = {"ruleset-1": factories.hunting_ruleset()}
    return build_livehunt_bundle([item], rulesets, {}, LivehuntOptions()).bundle


def _first(bundle: dict[str, Any], stix_type: str) -> dict[str, Any]:
    return next(obj for obj in bundle["objects"] if obj["type"] == stix_type)


def test_a_built_bundle_is_valid(bundle: dict[str, Any]) -> None:
    assert validate_bundle(bundle) == []


def test_empty_bundle_is_valid() -> None:
    assert validate_bundle(common.make_bundle([])) == []


@pytest.mark.parametrize(
    ("stix_type", "key"),
    [("incident", "created_by_ref"), ("file", "x_opencti_created_by_ref")],
)
def test_dangling_top_level_ref(bundle: dict[str, Any], stix_type: str, key: str) -> None:
    broken = copy.deepcopy(bundle)
    _first(broken, stix_type)[key] = "identity--00000000-0000-4000-8000-000000000000"
    problems = validate_bundle(broken)
    assert len(problems) == 1
    assert key in problems[0]
    assert "identity--00000000-0000-4000-8000-000000000000" in problems[0]


def test_dangling_ref_in_a_list_and_at_depth(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    missing = "marking-definition--00000000-0000-4000-8000-000000000000"
    rel = _first(broken, "relationship")
    rel["object_marking_refs"] = [*rel["object_marking_refs"], missing]
    _first(broken, "incident")["granular_markings"] = [
        {"marking_ref": missing, "selectors": ["name"]}
    ]
    problems = validate_bundle(broken)
    assert any("object_marking_refs[1]" in p and missing in p for p in problems)
    assert any("granular_markings[0].marking_ref" in p and missing in p for p in problems)


def test_removed_target_is_reported(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    file_id = _first(broken, "file")["id"]
    broken["objects"] = [obj for obj in broken["objects"] if obj["id"] != file_id]
    problems = validate_bundle(broken)
    assert problems
    assert all(file_id in p for p in problems)


def test_unparseable_object_is_reported(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    indicator = _first(broken, "indicator")
    indicator["pattern_type"] = "stix"  # a YARA rule is not a STIX pattern
    del _first(broken, "incident")["name"]
    problems = validate_bundle(broken)
    assert any(p.startswith(indicator["id"]) and "does not parse" in p for p in problems)
    assert any(p.startswith("incident--") and "does not parse" in p for p in problems)


def test_duplicate_ids_and_bad_envelope_are_reported(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    broken["objects"].append(copy.deepcopy(broken["objects"][0]))
    broken["type"] = "report"
    problems = validate_bundle(broken)
    assert any("more than once" in p for p in problems)
    assert any("not 'bundle'" in p for p in problems)
    assert validate_bundle({"type": "bundle", "id": "bundle--x", "objects": None}) == [
        "bundle objects is not a list"
    ]


def test_validate_bundles_in_two_processes_finds_what_one_finds(bundle: dict[str, Any]) -> None:
    """The forked half is as strict as this process: every broken bundle is reported, whichever
    process validated it, and the results equal validate_bundle's one by one."""
    from vt_pipeline.stix.validation import validate_bundles

    bundles: dict[str, Any] = {}
    for index in range(12):
        window = copy.deepcopy(bundle)
        if index % 3 == 0:
            _first(window, "incident")["created"] = "not a timestamp"
        if index % 4 == 1:
            _first(window, "relationship")["target_ref"] = (
                "file--00000000-0000-4000-8000-0000000000ff"
            )
        bundles[f"2026-11-01-{index:02d}:00"] = window

    parallel = validate_bundles(bundles, min_parallel_objects=0)
    serial = {key: validate_bundle(value) for key, value in bundles.items()}
    assert parallel == serial
    broken = {key for key, problems in parallel.items() if problems}
    assert len(broken) == 6  # bad dates in 0, 3, 6, 9; dangling references in 1, 5, 9
    assert validate_bundles({}) == {}


def test_a_forked_validator_that_dies_costs_nothing_but_time(
    bundle: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile: the forked copy dies mid-way (killed, out of memory); its share is validated
    in this process and every problem is still reported."""
    import os

    from vt_pipeline.stix import validation

    parent = os.getpid()
    real = validation.validate_bundle

    def dies_in_the_child(value: dict[str, Any]) -> list[str]:
        if os.getpid() != parent:
            os._exit(9)
        return real(value)

    monkeypatch.setattr(validation, "validate_bundle", dies_in_the_child)
    bundles = {}
    for index in range(6):
        window = copy.deepcopy(bundle)
        if index % 2:
            _first(window, "incident")["created"] = "not a timestamp"
        bundles[f"w{index}"] = window
    results = validation.validate_bundles(bundles, min_parallel_objects=0)
    assert sorted(key for key, problems in results.items() if problems) == ["w1", "w3", "w5"]
