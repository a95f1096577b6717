"""`vt-pipeline demo --graph` (issue 19): one file enriched with every expansion on, through the
sensor and the job as the demo's other enrichments, and the graph OpenCTI then holds around it
printed: each kind of object named in the output and held by the OpenCTI emulator, and the VT
calls printed per endpoint equal to what the VT emulator counted."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.cli import demo_graph, graph_file
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.requests import DRAIN_JOB, ENRICHMENT_JOB
from vt_pipeline.enrichment.sensor import (
    MODE_BATCH,
    MODE_DRAIN,
    SensorSettings,
    build_drain_sensor,
    build_enrichment_sensor,
)
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline_tests.enrichment.conftest import cti_resource, job_resources
from vt_pipeline_tests.enrichment.test_drain import own_connector

pytestmark = pytest.mark.integration
__all__ = ["cti_resource", "job_resources"]  # the enrichment tests' fixtures, shared


@pytest.mark.parametrize("mode", [MODE_BATCH, MODE_DRAIN])
def test_the_graph_demo_shows_one_fully_expanded_file(
    mode: str,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both modes: the demo drains (the default), the tests' environment batches."""
    settings = SensorSettings(mode=mode)
    sensors = (build_enrichment_sensor(settings), build_drain_sensor(settings))
    sha256, absent = graph_file(vt_corpus, 3)
    # This corpus has a file with all of issue 19's options; GTI relates no campaign to it.
    assert absent == ["a GTI campaign"]
    # A listen queue of the test's own: the broker outlives tests (see test_drain).
    resources = {**job_resources(), "opencti": own_connector(opencti)}
    assert demo_graph(dagster_instance, opencti, vt_emulator, vt_corpus, resources, sensors)
    shown = capsys.readouterr().out
    # The deployment's settings were not changed: the graph's run had its own resource.
    assert resources["enrichment_settings"] == EnrichmentSettings()

    (entity,) = [
        o["id"] for o in opencti.objects("StixFile") if o["hashes"].get("SHA-256") == sha256
    ]
    assert f"StixFile {sha256}  score {opencti.score_of(entity)}" in shown

    def held(relationship_type: str, direction: str = "from") -> list[dict[str, Any]]:
        found = opencti.related(entity, relationship_type, direction)
        assert found, f"no {relationship_type} ({direction}) in OpenCTI"
        return found

    # Related infrastructure and files, grouped by relationship type, capped per relation
    talked = held("communicates-with")
    assert {o["type"] for o in talked} >= {"domain-name", "ipv4-addr"}
    assert len(held("drops")) <= 5
    for group in ("communicates-with ->", "drops ->", "related-to ->", "<- related-to"):
        assert f"  {group} (" in shown, group
    for obj in talked + held("drops"):
        assert (obj.get("value") or obj["hashes"]["SHA-256"]) in shown
    related = held("related-to")
    assert any(o["type"] == "url" and o["value"] in shown for o in related)

    # The family, with the ATT&CK techniques it uses (x_mitre_id)
    (family,) = [o for o in related if o["type"] == "malware" and o["is_family"]]
    assert f"Malware         {family['name']} (family)" in shown
    techniques = opencti.related(family["id"], "uses")
    assert techniques and all(t["type"] == "attack-pattern" for t in techniques)
    for technique in techniques:
        assert f"uses -> Attack-Pattern  {technique['x_mitre_id']} {technique['name']}" in shown

    # Crowdsourced Sigma and IDS Indicators, related-to from the file
    patterns = {o["pattern_type"] for o in related if o["type"] == "indicator"}
    assert "sigma" in patterns and patterns & {"snort", "suricata"}
    assert "Indicator       [sigma] " in shown
    assert re.search(r"Indicator +\[(snort|suricata)\] ", shown)

    # GTI context: the actor uses the file, a campaign, a report containing the file
    (actor, *_) = [o for o in held("uses", "to") if o["type"] == "intrusion-set"]
    assert f"Intrusion-Set   {actor['name']}" in shown
    assert "VT has nothing for it on: a GTI campaign" in shown
    reports = opencti.containers_of(entity, "Report")
    assert reports and all(f"Report          {r['name']}" in shown for r in reports)

    # The comments Note
    (comments,) = [n for n in opencti.notes_about(entity) if "comments" in n["abstract"]]
    assert f"Note            {comments['abstract']}" in shown

    # VT calls per endpoint, as VT counted them, and as the run recorded them for the request
    spent = {
        endpoint: sum(codes.values())
        for endpoint, codes in vt_emulator.stats().items()
        if sum(codes.values()) and endpoint != "overall_quotas"  # the budget's, per session
    }
    listed = ", ".join(f"{endpoint} {count}" for endpoint, count in sorted(spent.items()))
    assert f"VT calls: {sum(spent.values())} ({listed})" in shown
    assert spent["file"] == 1 and spent["file_behaviour_mitre_trees"] == 1
    assert f"the run recorded: enriched, {sum(spent.values())} VT calls, 0 stored" in shown
    assert "work complete" in shown
    job = DRAIN_JOB if mode == MODE_DRAIN else ENRICHMENT_JOB
    assert f"1 run(s) of {job}: 1 succeeded" in shown
