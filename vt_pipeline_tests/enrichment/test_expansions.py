"""End to end: the enrichment expansions of issue 19 sections 2 to 4 (families, ATT&CK, Sigma
and IDS, comments, rescan, IPv6, GTI context) through the job (and the sensor for IPv6),
against the VT emulator and the OpenCTI emulator: what OpenCTI holds, the VT calls each request
cost against the README's table, re-enrichment adds nothing, and an expansion that fails leaves
the base enrichment intact with the reason on the work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
from pycti import AttackPattern, IntrusionSet, Malware

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.behaviour import mitre_trees
from vt_pipeline.emulators.virustotal.comments import comment_objects
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.gti import gti_kind, has_associations
from vt_pipeline.emulators.virustotal.gti_collections import associations
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.objects import is_analysed
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID, OpenCTIResource
from vt_pipeline_tests.conftest import PREMIUM_KEY, PUBLIC_KEY
from vt_pipeline_tests.enrichment import test_job
from vt_pipeline_tests.enrichment.test_job import Enrich, rows, work_message

enrich = test_job.enrich  # the fixture: ask OpenCTI, run the job, wait for the works

pytestmark = pytest.mark.integration

GTI_STANDARD_KEY = "gti-standard-key"  # GTI assessments, but not GTI Enterprise's threat objects
EXPANDED = {
    "file_malware_family": True,
    "file_attack_patterns": True,
    "file_import_sigma": True,
    "file_import_ids": True,
    "create_note_comments": True,
}


@pytest.fixture
def vt_emulator(vt_corpus: Corpus) -> Iterator[VirusTotalEmulator]:
    keys: dict[str, bool | ApiKey] = {
        PREMIUM_KEY: True,
        PUBLIC_KEY: False,
        GTI_STANDARD_KEY: ApiKey(gti_enterprise=False),
    }
    emulator = VirusTotalEmulator(vt_corpus, api_keys=keys, fault_timeout_seconds=3)
    with emulator.serve():
        yield emulator


def fully_expanded_file(corpus: Corpus) -> str:
    """The first file with every expansion: a family of >= 3 engines, Sigma and IDS matches,
    ATT&CK trees, comments and GTI associations."""
    for sha256, obj in sorted(corpus.files.items()):
        attrs = obj["attributes"]
        names = (attrs.get("popular_threat_classification") or {}).get("popular_threat_name")
        if (
            names
            and names[0]["count"] >= 3
            and attrs.get("sigma_analysis_results")
            and attrs.get("crowdsourced_ids_results")
            and mitre_trees(obj)
            and comment_objects("files", obj)
            and associations("files", obj)
        ):
            return sha256
    raise LookupError("no fully expanded file in the corpus")


def calls(emulator: VirusTotalEmulator) -> dict[str, int]:
    return {
        endpoint: sum(codes.values())
        for endpoint, codes in emulator.stats().items()
        if endpoint != "overall_quotas"
    }


def test_a_fully_expanded_file_builds_the_graph_at_its_documented_cost(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    sha256 = fully_expanded_file(vt_corpus)
    attrs = vt_corpus.files[sha256]["attributes"]
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": sha256})
    vt_emulator.reset_stats()
    result, (request,) = enrich(entity, **EXPANDED)
    assert result.success
    status, in_error, message = work_message(opencti, request.work_id)
    assert status == "complete" and not in_error, message

    # Cost: the lookup, the ATT&CK trees, one call per distinct Sigma rule, the comments and
    # (the lookup carried a GTI assessment) the associations: the README's table.
    sigma_rules = {r["rule_id"] for r in attrs["sigma_analysis_results"]}
    expected = {
        "file": 1,
        "file_behaviour_mitre_trees": 1,
        "sigma_rule": len(sigma_rules),
        "file_comments": 1,
        "file_associations": 1,
    }
    assert calls(vt_emulator) == expected
    (row,) = rows(result).values()
    assert row["vt_calls"] == sum(expected.values())

    # Family: the name >= 3 engines agree on, pycti's id, `related-to` from the file
    family = attrs["popular_threat_classification"]["popular_threat_name"][0]["value"]
    malware = opencti.get(Malware.generate_id(family))
    assert malware is not None and malware["is_family"] is True
    assert malware["id"] in {m["id"] for m in opencti.related(entity, "related-to")}

    # ATT&CK: every technique of the trees, pycti's id from the ATT&CK id, used by the family
    techniques = {
        t["id"]: t["name"]
        for tree in mitre_trees(vt_corpus.files[sha256]).values()
        for tactic in tree["tactics"]
        for t in tactic["techniques"]
    }
    used = opencti.related(malware["id"], "uses")
    assert {p["x_mitre_id"] for p in used} == set(techniques)
    assert {p["id"] for p in used} == {
        AttackPattern.generate_id(name, mitre_id) for mitre_id, name in techniques.items()
    }

    # Sigma and IDS: Indicators with their rule, related-to from the file
    indicators = opencti.related(entity, "related-to")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in indicators:
        if item["type"] == "indicator":
            by_type.setdefault(item["pattern_type"], []).append(item)
    assert len(by_type["sigma"]) == len(sigma_rules)
    assert all("detection:" in i["pattern"] for i in by_type["sigma"])
    ids_raw = {r["rule_raw"] for r in attrs["crowdsourced_ids_results"]}
    assert {i["pattern"] for k in ("snort", "suricata") for i in by_type.get(k, [])} == ids_raw

    # Comments: one note, escaped
    (comments,) = [n for n in opencti.notes_about(entity) if "community comments" in n["abstract"]]
    assert "<script>" not in comments["content"]

    # GTI: an Intrusion-Set uses the file, a Report contains it
    threats = associations("files", vt_corpus.files[sha256])
    actor = next(t for t in threats if t["attributes"]["collection_type"] == "threat-actor")
    user = opencti.related(entity, "uses", "to")
    assert IntrusionSet.generate_id(actor["attributes"]["name"]) in {u["id"] for u in user}

    # Re-enrichment: nothing new in OpenCTI, and from the cache nothing spent
    before = opencti.counts()
    again, _ = enrich(entity, **EXPANDED)
    assert again.success and opencti.counts() == before
    assert calls(vt_emulator) == expected
    fresh, _ = enrich(entity, lookup_cache_hours=0, **EXPANDED)
    assert fresh.success and opencti.counts() == before


def test_an_indicator_s_file_value_gets_its_family_and_techniques(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    """An Indicator is enriched through its values: the file's family and ATT&CK techniques
    hang on the file observable, `based-on` from the Indicator."""
    sha256 = fully_expanded_file(vt_corpus)
    indicator = opencti.create_indicator(
        f"[file:hashes.'SHA-256' = '{sha256}']",
        observable_values=[{"type": "StixFile", "value": sha256, "hashes": {"SHA-256": sha256}}],
        name=sha256,
    )
    vt_emulator.reset_stats()
    result, (request,) = enrich(indicator, file_malware_family=True, file_attack_patterns=True)
    assert result.success
    status, in_error, message = work_message(opencti, request.work_id)
    assert status == "complete" and not in_error, message
    (observable,) = opencti.related(indicator, "based-on")
    family = vt_corpus.files[sha256]["attributes"]["popular_threat_classification"]
    malware_id = Malware.generate_id(family["popular_threat_name"][0]["value"])
    assert malware_id in {m["id"] for m in opencti.related(observable["id"], "related-to")}
    assert opencti.related(malware_id, "uses")
    stats = calls(vt_emulator)
    assert stats["file"] == 1 and stats["file_behaviour_mitre_trees"] == 1


def test_failing_expansions_leave_the_base_enrichment_with_their_reasons(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    sha256 = fully_expanded_file(vt_corpus)
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": sha256})
    # malformed ATT&CK trees (every retry), comments down for good, GTI Enterprise missing
    vt_emulator.api.set_faults("file_behaviour_mitre_trees:malformed:1,file_comments:503:1")
    result, (request,) = enrich(
        entity, virustotal={"api_key": GTI_STANDARD_KEY, "max_attempts": 2}, **EXPANDED
    )
    assert result.success  # the base enrichment stands
    status, in_error, message = work_message(opencti, request.work_id)
    assert status == "complete" and not in_error
    assert "attack_patterns left out" in message and "comments left out" in message
    assert "gti_context left out" in message and "GTI Enterprise" in message
    assert opencti.score_of(entity) is not None
    assert opencti.notes_about(entity)  # the analysis report is there
    assert not opencti.objects("Attack-Pattern") and not opencti.objects("Intrusion-Set")
    assert opencti.objects("Malware")  # the family came with the lookup itself


def test_a_key_without_gti_costs_nothing_extra(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    sha256 = fully_expanded_file(vt_corpus)
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": sha256})
    vt_emulator.reset_stats()
    result, _ = enrich(entity, virustotal={"api_key": PUBLIC_KEY})
    assert result.success
    assert calls(vt_emulator) == {"file": 1}  # GTI context is on by default
    assert not opencti.objects("Intrusion-Set")


def test_gti_context_is_asked_only_when_the_assessment_names_an_association(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    """A GTI key: the assessment comes with every lookup, the associations call only for the
    objects whose contributing factors name a Mandiant association."""
    scored = next(
        sha256
        for sha256, obj in sorted(vt_corpus.files.items())
        if gti_kind(obj) == "full" and is_analysed(obj) and not has_associations(obj)
    )
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": scored})
    vt_emulator.reset_stats()
    result, _ = enrich(entity)
    assert result.success and calls(vt_emulator) == {"file": 1}


def test_an_old_report_is_re_analysed_before_it_is_used(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    old = vt_corpus.targets().old_file
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": old})
    vt_emulator.reset_stats()
    result, (request,) = enrich(entity, rescan_older_than_days=30, gti_context=False)
    assert result.success
    _, _, message = work_message(opencti, request.work_id)
    assert "re-analysed (the report was" in message
    stats = calls(vt_emulator)
    assert stats["file_analyse"] == 1 and stats["file"] == 2 and stats["analysis"] >= 1
    (note,) = opencti.notes_about(entity)
    old_date = vt_corpus.files[old]["attributes"]["last_analysis_date"]
    assert str(old_date) not in note["content"]
    # fresh now: asked again, no second re-analysis
    again, _ = enrich(entity, rescan_older_than_days=30, gti_context=False, lookup_cache_hours=0)
    assert again.success and calls(vt_emulator)["file_analyse"] == 1


def test_a_url_is_re_analysed_and_gets_its_comments_and_gti_context(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    """A network entity: the URL re-analysed by its VT id, the comments note and GTI's threat
    objects (Malware `communicates-with` the URL), each call counted."""
    obj = next(
        o
        for _, o in sorted(vt_corpus.urls.items())
        if is_analysed(o) and comment_objects("urls", o) and has_associations(o)
    )
    url = obj["attributes"]["url"]
    entity = opencti.create_observable("Url", url)
    vt_emulator.reset_stats()
    result, (request,) = enrich(entity, create_note_comments=True, rescan_older_than_days=1)
    assert result.success
    _, _, message = work_message(opencti, request.work_id)
    assert "re-analysed" in message
    stats = calls(vt_emulator)
    assert (stats["url"], stats["url_analyse"], stats["url_comments"]) == (2, 1, 1)
    assert stats["url_associations"] == 1
    notes = [n["abstract"] for n in opencti.notes_about(entity)]
    assert "VirusTotal community comments" in notes
    family = next(
        t
        for t in associations("urls", obj)
        if t["attributes"]["collection_type"] == "malware-family"
    )
    talking = opencti.related(entity, "communicates-with", "to")
    assert Malware.generate_id(family["attributes"]["name"]) in {m["id"] for m in talking}


def test_a_re_analysis_that_does_not_finish_falls_back_to_the_stored_report(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    vt_emulator.api.set_analysis_time(polls=1000)
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": vt_corpus.targets().old_file})
    result, (request,) = enrich(
        entity,
        virustotal={"analysis_timeout_seconds": 0.3},
        rescan_older_than_days=30,
        gti_context=False,
    )
    assert result.success
    status, in_error, message = work_message(opencti, request.work_id)
    assert status == "complete" and not in_error
    assert "re-analysis of the" in message and "stored report used" in message
    assert opencti.score_of(entity) is not None


def test_an_ipv6_address_is_enriched_through_the_sensor(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    address = next(k for k in sorted(vt_corpus.ip_addresses) if ":" in k)
    entity = opencti.create_observable("IPv6-Addr", address)
    work = opencti.ask_enrichment(entity, ENRICHMENT_CONNECTOR_ID)
    context = dg.build_sensor_context(
        instance=dagster_instance,
        resources={"opencti": cti_resource},
        definitions=dg.Definitions.merge(
            enrichment_defs, dg.Definitions(resources=job_resources())
        ),
    )
    tick = opencti_enrichment_sensor.evaluate_tick(context)
    (run_request,) = tick.run_requests or []
    result = vt_enrichment_job.execute_in_process(
        run_config=run_request.run_config,
        resources=job_resources(),
        instance=dagster_instance,
        tags={**run_request.tags, "dagster/run_key": run_request.run_key},
    )
    assert result.success
    status, in_error, message = work_message(opencti, work)
    assert status == "complete" and not in_error, message
    assert opencti.score_of(entity) is not None
    assert opencti.related(entity, "belongs-to") and opencti.related(entity, "located-at")
    assert opencti.notes_about(entity)
