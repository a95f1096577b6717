"""VT relations in the enrichment mapping: each related object as its observable with VT's score
when VT sent its stats, linked by a relationship OpenCTI's matrix accepts (checked against the
OpenCTI emulator's transcription of it), a failed relation counted and nothing else lost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.emulators.opencti.store import classify
from vt_pipeline.stix import (
    EnrichmentMappingOptions,
    build_enrichment,
    common,
    enrichment_bundle,
    serialize_bundle,
    validate_bundle,
)
from vt_pipeline.stix.enrichment.relations import RELATIONS
from vt_pipeline.virustotal.relations import RELATIONSHIPS
from vt_pipeline.virustotal.reports import (
    Relation,
    read_relation,
    read_report,
    with_relations,
)
from vt_pipeline_tests import enrichment_factories as ef
from vt_pipeline_tests import factories

SHA_A = factories.hashes_for("dropped")["sha256"]
SHA_B = factories.hashes_for("parent")["sha256"]
URL = "http://cdn.evil.example/a.php?x=1"
REQUESTED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
STATS = {"malicious": 6, "harmless": 2, "undetected": 12, "suspicious": 0, "timeout": 0}
# One item of every kind a relation can hold: (VT descriptor or object, its observable type)
ITEMS: dict[str, dict[str, Any]] = {
    "domain": {"type": "domain", "id": "c2.evil.example"},
    "ip_address": {"type": "ip_address", "id": "198.51.100.9"},
    "ipv6": {"type": "ip_address", "id": "2001:db8::9"},
    "url": {"type": "url", "id": "ab" * 32, "context_attributes": {"url": URL}},
    "file": {"type": "file", "id": SHA_A},
}


def related_kinds(relation: str, subject: str) -> list[str]:
    """The items a relation can hold, by the kind of its objects."""
    if relation == "resolutions":
        return ["ip_address", "ipv6"] if subject == "domain" else ["domain"]
    if relation in ("contacted_ips", "last_serving_ip_address"):
        return ["ip_address", "ipv6"]
    if relation in ("contacted_domains", "subdomains"):
        return ["domain"]
    if relation.endswith("urls") or relation == "redirects_to":
        return ["url"]
    return ["file"]


def items_of(relation: str, subject_kind: str, subject_id: str) -> list[dict[str, Any]]:
    out = []
    for kind in related_kinds(relation, subject_kind):
        if relation == "resolutions":  # a resolution descriptor: the IP followed by the domain
            other = ITEMS[kind]["id"]
            resolution_id = other + subject_id if subject_kind == "domain" else subject_id + other
            out.append({"type": "resolution", "id": resolution_id})
        else:
            out.append(ITEMS[kind])
    return out


def ipv6_entity(value: str) -> dict[str, Any]:
    """An IPv6-Addr as pycti exports it (the factories' IPv4 one, retyped)."""
    entity = ef.opencti_value_observable("IPv4-Addr", value)
    entity.update(type="ipv6-addr", id=common.sco_id("ipv6-addr", {"value": value}))
    entity["x_opencti_type"] = "IPv6-Addr"
    return entity


ENTITIES = {
    "StixFile": (lambda: ef.opencti_file(), lambda: ef.vt_file(), "file"),
    "Artifact": (lambda: ef.opencti_file(artifact=True), lambda: ef.vt_file(), "file"),
    "Domain-Name": (
        lambda: ef.opencti_value_observable("Domain-Name", "evil.example.com"),
        lambda: ef.vt_domain("evil.example.com"),
        "domain",
    ),
    "Hostname": (
        lambda: ef.opencti_value_observable("Hostname", "evil.example.com"),
        lambda: ef.vt_domain("evil.example.com"),
        "domain",
    ),
    "IPv4-Addr": (
        lambda: ef.opencti_value_observable("IPv4-Addr", "203.0.113.7"),
        lambda: ef.vt_ip("203.0.113.7"),
        "ip_address",
    ),
    "IPv6-Addr": (
        lambda: ipv6_entity("2001:db8::7"),
        lambda: ef.vt_ip("2001:db8::7"),
        "ip_address",
    ),
    "Url": (
        lambda: ef.opencti_value_observable("Url", "http://evil.example.com/x"),
        lambda: ef.vt_url("http://evil.example.com/x"),
        "url",
    ),
}


def enrich_with(entity_type: str, relations: list[Relation], **options: Any) -> Any:
    make_entity, make_vt, kind = ENTITIES[entity_type]
    entity, vt_object = make_entity(), make_vt()
    report = read_report(kind, vt_object)  # type: ignore[arg-type]
    assert report is not None
    result = build_enrichment(
        entity,
        entity_type,
        with_relations(report, relations),
        EnrichmentMappingOptions(**options),
        requested_at=REQUESTED_AT,
    )
    bundle = enrichment_bundle(ef.context_objects(entity), result.objects)
    assert validate_bundle(bundle) == []
    assert result.stats["section_errors"] == 0
    return entity, result


def by_id(result: Any) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in result.objects}


def name(obj: dict[str, Any]) -> str:
    """An object as a test names it: its value, a file's SHA-256, else its id."""
    return obj.get("value") or (obj.get("hashes") or {}).get("SHA-256") or obj["id"]


def relationships(result: Any) -> list[dict[str, Any]]:
    return [o for o in result.objects if o["type"] == "relationship"]


@pytest.mark.parametrize("entity_type", sorted(ENTITIES))
def test_every_relationship_the_mapping_sends_is_in_opencti_s_matrix(entity_type: str) -> None:
    """Every relation of the entity's kind, every kind of object it can hold: the relationship
    built is one the OpenCTI emulator (OpenCTI's stixCoreRelationshipsMapping) accepts."""
    kind = ENTITIES[entity_type][2]
    entity = ENTITIES[entity_type][0]()
    subject = entity.get("value", "") if kind in ("domain", "ip_address") else ""
    relations = [
        read_relation(name, kind, subject, items_of(name, kind, subject), limit=10)  # type: ignore[arg-type]
        for name in RELATIONSHIPS[kind]  # type: ignore[index]
    ]
    assert all(r.objects and not r.invalid for r in relations)
    _, result = enrich_with(entity_type, relations)
    objects = by_id(result)
    linked: set[str] = set()
    for rel in relationships(result):
        source, target = objects[rel["source_ref"]], objects[rel["target_ref"]]
        (from_type, _), (to_type, parents) = classify(source), classify(target)
        observable = "Stix-Cyber-Observable" in parents
        assert matrix.accepts(from_type, to_type, rel["relationship_type"], observable), (
            f"{from_type} {rel['relationship_type']} {to_type}"
        )
        linked |= {name(source), name(target)}
    distinct = {(o.kind, o.value) for r in relations for o in r.objects}
    assert result.stats["related_objects"] == len(distinct)  # one observable each
    assert {o.value for r in relations for o in r.objects} <= linked  # each one linked


def test_related_objects_are_observables_with_vt_s_score_and_the_entity_s_markings_on_links() -> (
    None
):
    full_ip = {
        "type": "ip_address",
        "id": "198.51.100.9",
        "attributes": {"last_analysis_stats": STATS},
    }
    relations = [
        read_relation("contacted_ips", "file", "", [full_ip, ITEMS["ipv6"]], limit=10),
        read_relation("contacted_domains", "file", "", [ITEMS["domain"]], limit=10),
        read_relation("dropped_files", "file", "", [ITEMS["file"]], limit=10),
        read_relation("execution_parents", "file", "", [{"type": "file", "id": SHA_B}], limit=10),
        read_relation("contacted_urls", "file", "", [ITEMS["url"]], limit=10),
    ]
    entity, result = enrich_with("StixFile", relations)
    objects = by_id(result)
    values = {
        o.get("value") or o["hashes"]["SHA-256"]: o
        for o in objects.values()
        if o["type"] in ("ipv4-addr", "ipv6-addr", "domain-name", "url", "file")
        and o["id"] != entity["id"]
    }
    assert set(values) == {"198.51.100.9", "2001:db8::9", "c2.evil.example", URL, SHA_A, SHA_B}
    # VT's score only where VT sent the stats (a full object): 6 / (6 + 2 + 12)
    assert values["198.51.100.9"]["x_opencti_score"] == 30
    assert "x_opencti_score" not in values["c2.evil.example"]
    assert all("object_marking_refs" not in o for o in values.values())  # shared objects
    links = {
        (name(objects[r["source_ref"]]), r["relationship_type"], name(objects[r["target_ref"]])): r
        for r in relationships(result)
    }
    me = entity["hashes"]["SHA-256"]
    assert (me, "communicates-with", "198.51.100.9") in links
    assert (me, "communicates-with", "2001:db8::9") in links
    assert (me, "communicates-with", "c2.evil.example") in links
    assert (me, "drops", SHA_A) in links
    assert (SHA_B, "related-to", me) in links  # the parent executed the file
    assert (me, "related-to", URL) in links  # OpenCTI has no file -> URL type
    assert all(
        links[key]["object_marking_refs"] == [ef.TLP_AMBER]
        for key in links
        if me in (key[0], key[2])
    )
    assert result.stats["related_objects"] == 6


def test_the_cap_is_the_reader_s_and_unusable_items_are_counted() -> None:
    items = [{"type": "domain", "id": f"d{i}.evil.example"} for i in range(15)]
    items.insert(3, {"type": "domain", "id": "not a domain"})
    items.insert(5, {"type": "url", "id": "cd" * 32})  # a URL descriptor without its URL
    relation = read_relation("contacted_domains", "file", "", items, limit=4)
    assert [o.value for o in relation.objects] == [f"d{i}.evil.example" for i in range(4)]
    assert relation.invalid == 2
    _, result = enrich_with("StixFile", [relation])
    assert result.stats["related_objects"] == 4
    assert result.stats["invalid_values"] >= 2


def test_a_failed_relation_is_counted_and_the_base_enrichment_stands() -> None:
    failed = Relation("contacted_ips", error="VirusTotal answered NotFoundError", calls=1)
    ok = read_relation("contacted_domains", "file", "", [ITEMS["domain"]], limit=10)
    _, with_failure = enrich_with("StixFile", [failed, ok])
    _, base = enrich_with("StixFile", [])
    assert with_failure.stats["relations_failed"] == 1
    assert with_failure.score == base.score
    base_ids = {o["id"] for o in base.objects}
    assert base_ids < {o["id"] for o in with_failure.objects}


def test_without_replace_with_lower_score_related_objects_carry_no_score() -> None:
    full = {"type": "domain", "id": "c2.evil.example", "attributes": {"last_analysis_stats": STATS}}
    relation = read_relation("contacted_domains", "file", "", [full], limit=10)
    _, result = enrich_with("StixFile", [relation], replace_with_lower_score=False)
    (domain,) = [o for o in result.objects if o["type"] == "domain-name"]
    assert "x_opencti_score" not in domain


def test_same_relations_give_the_same_bytes() -> None:
    relation = read_relation("contacted_ips", "file", "", [ITEMS["ip_address"]], limit=10)
    _, first = enrich_with("StixFile", [relation])
    _, again = enrich_with("StixFile", [relation])
    assert serialize_bundle(enrichment_bundle([], first.objects)) == serialize_bundle(
        enrichment_bundle([], again.objects)
    )


def test_every_relation_vt_knows_has_a_link() -> None:
    for kind, names in RELATIONSHIPS.items():
        for name in names:
            assert (kind, name) in RELATIONS
