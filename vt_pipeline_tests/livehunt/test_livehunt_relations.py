"""Livehunt's matched files with their VT relations (issue 19 section 5): the same fetch and the
same mapping as enrichment, counted in the window's VT calls, replayed from what was stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.emulators.opencti.store import classify
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.stix.validation import validate_bundle
from vt_pipeline_tests.conftest import ResourcesFactory, rebuild_bundle, stored
from vt_pipeline_tests.conftest import materialize_hours as run

pytestmark = pytest.mark.integration

HOUR = 2
WANTED = ["contacted_domains", "contacted_ips", "dropped_files", "itw_urls"]


def window_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_kept_files_carry_their_relations_in_the_window_s_bundle(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resources = livehunt_resources(file_relationships=WANTED, relationships_limit=3)
    result = run(dagster_instance, resources, HOUR)
    assert result.success
    storage = tmp_path / "storage"
    record = json.loads(stored(storage, "livehunt_file_relations", HOUR).read_bytes())
    bundle = json.loads(stored(storage, "livehunt_stix_bundles", HOUR).read_bytes())
    assert validate_bundle(bundle) == []
    objects = {o["id"]: o for o in bundle["objects"]}
    files = {
        o["hashes"]["SHA-256"]: o
        for o in bundle["objects"]
        if o["type"] == "file" and o["hashes"].get("SHA-256") in record
    }
    assert record and set(files) == set(record)  # every kept file, looked up once

    # the relationships of each kept file: in OpenCTI's matrix, at most 3 a relation
    by_type: dict[str, int] = {}
    for rel in (o for o in bundle["objects"] if o["type"] == "relationship"):
        ends = objects[rel["source_ref"]], objects[rel["target_ref"]]
        if not any(end["id"] in {f["id"] for f in files.values()} for end in ends):
            continue
        (from_type, _), (to_type, parents) = classify(ends[0]), classify(ends[1])
        assert matrix.accepts(
            from_type, to_type, rel["relationship_type"], "Stix-Cyber-Observable" in parents
        ), (from_type, rel["relationship_type"], to_type)
        by_type[rel["relationship_type"]] = by_type.get(rel["relationship_type"], 0) + 1
    assert by_type.get("communicates-with") and by_type.get("drops")
    for sha256, file in files.items():
        drops = [
            o
            for o in bundle["objects"]
            if o["type"] == "relationship"
            and o["relationship_type"] == "drops"
            and o["source_ref"] == file["id"]
        ]
        assert len(drops) <= 3, sha256
        assert all(r.get("object_marking_refs") == file.get("object_marking_refs") for r in drops)

    # VT calls: one lookup per kept file carrying every relation, one more for itw_urls
    # (its descriptors do not name the URLs), in the window's figures
    assert vt_emulator.count("file") >= len(record)
    assert vt_emulator.count("file_itw_urls") == len(record)
    assert vt_emulator.count("file_contacted_domains") == 0
    metadata = window_metadata(result, "livehunt_file_relations")
    assert metadata["files_expanded"] == len(record)
    assert metadata["vt_calls"] == 2 * len(record)

    # the bundle rebuilt alone replays the stored answers: same bytes, no call
    vt_emulator.reset_stats()
    first, rebuilt = rebuild_bundle(dagster_instance, resources, storage, HOUR)
    assert rebuilt == first
    assert vt_emulator.stats() == {}  # not one VirusTotal request


def test_without_relations_no_call_and_the_same_bundle(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    result = run(dagster_instance, livehunt_resources(), HOUR)
    assert result.success
    record = json.loads(stored(tmp_path / "storage", "livehunt_file_relations", HOUR).read_bytes())
    assert record == {}
    assert all(vt_emulator.count(f"file_{name}") == 0 for name in ("itw_urls", "contacted_domains"))
    assert "vt_calls" not in window_metadata(result, "livehunt_file_relations")


def test_an_unknown_relation_fails_at_load_naming_the_variable() -> None:
    with pytest.raises(Exception, match="VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_RELATIONSHIPS"):
        LivehuntSettings.from_env(
            {"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_RELATIONSHIPS": "contacted_ips,resolutions"}
        )
