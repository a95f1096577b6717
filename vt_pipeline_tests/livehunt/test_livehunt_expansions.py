"""Livehunt's matched files with their malware families and ATT&CK techniques (issue 19 section
5): enrichment's fetch and mapping, counted in the window's VT calls, replayed from what was
stored, and what OpenCTI holds once the window is delivered (its matrix accepting all of it)."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from pycti import AttackPattern, Malware

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.opencti.store import classify
from vt_pipeline.emulators.virustotal.behaviour import mitre_trees
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.relations import MITRE_TREES
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.stix.validation import validate_bundle
from vt_pipeline_tests.conftest import ResourcesFactory, rebuild_bundle, stored
from vt_pipeline_tests.conftest import materialize_hours as run
from vt_pipeline_tests.livehunt.test_delivery import cti
from vt_pipeline_tests.livehunt.test_livehunt_relations import window_metadata

pytestmark = pytest.mark.integration

HOUR = 2
MITRE_TREES_CALLS = "file_behaviour_mitre_trees"


def mapping_counts(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    table = window_metadata(result, "livehunt_stix_bundles")["mapping"]
    return {row.data["event"]: row.data["count"] for row in table.records}


def read(storage: Path, asset: str) -> Any:
    return json.loads(stored(storage, asset, HOUR).read_bytes())


def kept_files(bundle: dict[str, Any], storage: Path) -> dict[str, dict[str, Any]]:
    """The bundle's files of kept notifications, by SHA-256 (the filters' table says which)."""
    table = pd.read_parquet(stored(storage, "livehunt_files", HOUR, ".parquet"))
    kept = set(table[table["kept"] & (table["object_type"] == "file")]["subject"].astype(str))
    files = {
        o["hashes"]["SHA-256"]: o
        for o in bundle["objects"]
        if o["type"] == "file" and o.get("hashes", {}).get("SHA-256") in kept
    }
    assert files and set(files) == kept
    return files


def families_of(corpus: Corpus, sha256: str, min_engines: int) -> list[tuple[str, int]]:
    """VT's family names for the file with enough engines, the most agreed first."""
    threat = corpus.find_file(sha256)["attributes"].get("popular_threat_classification") or {}
    names = [(v["value"], v["count"]) for v in threat.get("popular_threat_name") or []]
    agreed = [(name, count) for name, count in names if count >= min_engines]
    return sorted(agreed, key=lambda vote: (-vote[1], vote[0].lower()))


def techniques_of(corpus: Corpus, sha256: str) -> dict[str, str]:
    """ATT&CK id -> name of what the emulator's sandboxes report for the file."""
    found = {}
    for tree in mitre_trees(corpus.find_file(sha256)).values():
        for tactic in tree["tactics"]:
            for technique in tactic["techniques"]:
                found[technique["id"]] = technique["name"]
    return found


def links(bundle: dict[str, Any], rel_type: str) -> set[tuple[str, str]]:
    return {
        (o["source_ref"], o["target_ref"])
        for o in bundle["objects"]
        if o["type"] == "relationship" and o["relationship_type"] == rel_type
    }


def test_kept_files_carry_their_families_and_techniques_into_opencti(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    vt_corpus: Corpus,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resources = livehunt_resources(
        opencti=cti(opencti),
        file_malware_family=True,
        file_attack_patterns=True,
        file_relationships=["contacted_domains"],  # with the relations: one mapping per file
    )
    result = run(dagster_instance, resources, HOUR, deliver=True)
    assert result.success
    storage = tmp_path / "storage"
    record = read(storage, "livehunt_file_relations")
    bundle = read(storage, "livehunt_stix_bundles")
    assert validate_bundle(bundle) == []
    files = kept_files(bundle, storage)
    assert set(record) == set(files)  # every kept file's trees, stored raw
    assert all(MITRE_TREES in entry["pages"] for entry in record.values())
    objects = {o["id"]: o for o in bundle["objects"]}
    related, uses = links(bundle, "related-to"), links(bundle, "uses")

    with_family = with_techniques = 0
    for sha256, file in files.items():
        # families: pycti's Malware id from the name, related-to from the file, its markings
        families = families_of(vt_corpus, sha256, 3)
        ids = [Malware.generate_id(name) for name, _ in families]
        for malware_id, (name, _) in zip(ids, families, strict=True):
            assert objects[malware_id]["name"] == name and objects[malware_id]["is_family"]
            assert (file["id"], malware_id) in related
        fewer = {Malware.generate_id(n) for n, _ in families_of(vt_corpus, sha256, 1)} - set(ids)
        assert not any((file["id"], m) in related for m in fewer)  # under 3 engines: left out
        with_family += bool(ids)
        # techniques: pycti's Attack-Pattern id from name and x_mitre_id, used by the family
        # the most engines agree on, else by the file
        user = ids[0] if ids else file["id"]
        for mitre_id, name in techniques_of(vt_corpus, sha256).items():
            pattern_id = AttackPattern.generate_id(name, mitre_id)
            assert objects[pattern_id]["x_mitre_id"] == mitre_id
            assert (user, pattern_id) in uses, (sha256, mitre_id)
            with_techniques += 1
    assert with_family and with_techniques  # the window shows both

    # what links them to the files carries the file's marking; the shared objects none
    marking = next(o["id"] for o in bundle["objects"] if o["type"] == "marking-definition")
    for rel in (o for o in bundle["objects"] if o["type"] == "relationship"):
        ends = objects[rel["source_ref"]], objects[rel["target_ref"]]
        if {"malware", "attack-pattern"} & {end["type"] for end in ends}:
            assert rel["object_marking_refs"] == [marking]
            (from_type, _), (to_type, parents) = classify(ends[0]), classify(ends[1])
            assert matrix.accepts(
                from_type, to_type, rel["relationship_type"], "Stix-Cyber-Observable" in parents
            ), (from_type, rel["relationship_type"], to_type)
    assert all(
        "object_marking_refs" not in o
        for o in bundle["objects"]
        if o["type"] in ("malware", "attack-pattern")
    )

    # OpenCTI holds all of it: its matrix refused nothing
    held = {o["id"] for o in opencti.objects("Malware") + opencti.objects("Attack-Pattern")}
    sent = {o["id"] for o in bundle["objects"] if o["type"] in ("malware", "attack-pattern")}
    assert sent and sent <= held
    assert {r["id"] for r in opencti.relationships()} >= {
        o["id"] for o in bundle["objects"] if o["type"] == "relationship"
    }
    work = opencti.work(window_metadata(result, "livehunt_opencti_delivery")["work_id"])
    assert work is not None and work.status == "complete" and not work.errors

    assert links(bundle, "communicates-with")  # the relations beside them

    # VT calls: one trees call per kept file (the family is in the notification: none), and
    # the relations' lookup, in the window's figures
    assert vt_emulator.count(MITRE_TREES_CALLS) == len(files)
    metadata = window_metadata(result, "livehunt_file_relations")
    assert metadata["files_expanded"] == len(files)
    assert metadata["vt_calls"] == 2 * len(files)
    assert "attack_patterns" in metadata["relations"]
    mapping = mapping_counts(result)
    assert mapping["attack_patterns"] and mapping["malware_families"]

    # the bundle rebuilt alone replays the stored answers: same bytes, no call
    vt_emulator.reset_stats()
    first, again = rebuild_bundle(dagster_instance, resources, storage, HOUR)
    assert again == first
    assert vt_emulator.stats() == {}  # not one VirusTotal request


def test_families_alone_cost_no_call_and_techniques_alone_are_the_file_s(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    families_only = livehunt_resources(file_malware_family=True, file_malware_family_min_engines=5)
    result = run(dagster_instance, families_only, HOUR)
    assert result.success
    storage = tmp_path / "storage"
    assert read(storage, "livehunt_file_relations") == {}
    assert "vt_calls" not in window_metadata(result, "livehunt_file_relations")
    assert vt_emulator.count(MITRE_TREES_CALLS) == 0
    bundle = read(storage, "livehunt_stix_bundles")
    files = kept_files(bundle, storage)
    expected = {
        (file["id"], Malware.generate_id(name))
        for sha256, file in files.items()
        for name, _ in families_of(vt_corpus, sha256, 5)
    }
    assert expected and links(bundle, "related-to") >= expected
    malware = {o["id"] for o in bundle["objects"] if o["type"] == "malware"}
    assert malware == {target for _, target in expected}  # 5 engines at least, nothing else
    assert any(
        families_of(vt_corpus, sha256, 1) != families_of(vt_corpus, sha256, 5) for sha256 in files
    )  # some kept file's family had fewer engines: left out
    assert not any(o["type"] == "attack-pattern" for o in bundle["objects"])

    techniques_only = livehunt_resources(
        file_attack_patterns=True, storage_dir=tmp_path / "techniques"
    )
    assert run(dagster_instance, techniques_only, HOUR).success
    bundle = read(tmp_path / "techniques", "livehunt_stix_bundles")
    assert not any(o["type"] == "malware" for o in bundle["objects"])
    expected = {
        (file["id"], AttackPattern.generate_id(name, mitre_id))
        for sha256, file in kept_files(bundle, tmp_path / "techniques").items()
        for mitre_id, name in techniques_of(vt_corpus, sha256).items()
    }
    assert expected and links(bundle, "uses") == expected  # StixFile uses Attack-Pattern


def test_a_failing_trees_call_leaves_the_bundle_with_the_reason(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    base = run(dagster_instance, livehunt_resources(storage_dir=tmp_path / "base"), HOUR)
    assert base.success
    vt_emulator.set_faults(f"{MITRE_TREES_CALLS}:malformed:1")
    resources = livehunt_resources(file_attack_patterns=True, file_malware_family=True)
    result = run(dagster_instance, resources, HOUR)
    assert result.success
    storage = tmp_path / "storage"
    record = read(storage, "livehunt_file_relations")
    assert record and all("error" in entry["pages"][MITRE_TREES] for entry in record.values())
    assert (
        "attack_patterns failed" in window_metadata(result, "livehunt_file_relations")["relations"]
    )
    bundle = read(storage, "livehunt_stix_bundles")
    assert not any(o["type"] == "attack-pattern" for o in bundle["objects"])
    mapping = mapping_counts(result)
    assert mapping["expansions_failed"] == len(record)
    # the rest of the window's bundle stands: every object of the base bundle is there
    base_ids = {o["id"] for o in read(tmp_path / "base", "livehunt_stix_bundles")["objects"]}
    assert base_ids <= {o["id"] for o in bundle["objects"]}
    assert any(o["type"] == "malware" for o in bundle["objects"])  # families need no call


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FILE_MALWARE_FAMILY_MIN_ENGINES", "0"),
        ("FILE_MALWARE_FAMILY_MIN_ENGINES", "three"),
        ("FILE_ATTACK_PATTERNS", "maybe"),
        ("FILE_MALWARE_FAMILY", "2"),
    ],
)
def test_a_bad_option_fails_at_load_naming_the_variable(variable: str, value: str) -> None:
    name = "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_" + variable
    with pytest.raises(Exception, match=name) as caught:
        LivehuntSettings.from_env({name: value})
    assert repr(value) in str(caught.value)


def test_the_options_are_off_by_default_and_read_from_the_upstream_prefix() -> None:
    assert not LivehuntSettings.from_env({}).file_expansions().any
    wanted = LivehuntSettings.from_env(
        {
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_MALWARE_FAMILY": "true",
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_MALWARE_FAMILY_MIN_ENGINES": "5",
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_ATTACK_PATTERNS": "yes",
        }
    ).file_expansions()
    assert (wanted.malware_family, wanted.min_engines, wanted.attack_patterns) == (True, 5, True)
    assert wanted.fetches  # the trees cost a call; the family alone would not
