"""The OpenCTI emulator refuses relationships outside OpenCTI's matrix, as the real platform
does (stixCoreRelationshipsMapping in opencti-graphql `src/database/stix.ts`): the refused
relationship is not stored, the rest of the bundle is, and the work records the error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.emulators.opencti.graphql import GraphQLFault
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.opencti.store import Store
from vt_pipeline.stix import common

T0 = "2025-11-20T10:00:00.000Z"
AUTHOR = common.author_identity("VirusTotal")


def observable(stix_type: str, value: str) -> dict[str, Any]:
    return common.value_observable(
        stix_type, value, created_by_ref=AUTHOR["id"], object_marking_refs=()
    )


def link(rel_type: str, source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    return common.relationship(
        rel_type,
        source["id"],
        target["id"],
        created=T0,
        created_by_ref=AUTHOR["id"],
        object_marking_refs=(),
    )


URL = observable("url", "http://evil.example/gate.php")
IP = observable("ipv4-addr", "198.51.100.9")
DOMAIN = observable("domain-name", "evil.example")
FILE = {
    "type": "file",
    "spec_version": "2.1",
    "id": common.sco_id("file", {"hashes": {"SHA-256": "a" * 64}}),
    "hashes": {"SHA-256": "a" * 64},
}


@pytest.mark.parametrize(
    ("from_type", "to_type", "relationship", "accepted"),
    [
        ("StixFile", "IPv4-Addr", "communicates-with", True),
        ("StixFile", "Url", "communicates-with", False),  # no StixFile_Url entry
        ("StixFile", "Url", "related-to", True),  # related-to: any two types
        ("Url", "IPv4-Addr", "communicates-with", False),
        ("Domain-Name", "IPv4-Addr", "resolves-to", True),
        ("IPv4-Addr", "Domain-Name", "resolves-to", False),  # the direction matters
        ("StixFile", "StixFile", "drops", True),
        ("Artifact", "StixFile", "drops", False),  # Artifact_StixFile: interpreted-by only
        ("Indicator", "Url", "based-on", True),  # Indicator_Stix-Cyber-Observable
        ("Malware", "Attack-Pattern", "uses", True),
        ("Attack-Pattern", "Malware", "indicates", False),
    ],
)
def test_the_matrix_is_opencti_s(
    from_type: str, to_type: str, relationship: str, accepted: bool
) -> None:
    observable_target = to_type not in ("Malware", "Attack-Pattern")
    assert matrix.accepts(from_type, to_type, relationship, observable_target) is accepted


def test_a_relationship_outside_the_matrix_is_refused_and_the_rest_stored() -> None:
    store = Store()
    wrong = link("communicates-with", URL, IP)
    right = link("resolves-to", DOMAIN, IP)
    with pytest.raises(GraphQLFault) as refused:
        store.ingest_bundle(common.make_bundle([AUTHOR, URL, IP, DOMAIN, wrong, right]))
    assert refused.value.message == (
        "The relationship type communicates-with is not allowed between Url and IPv4-Addr"
    )
    assert store.get(wrong["id"]) is None
    assert store.get(right["id"]) is not None  # the rest of the bundle is there
    assert all(store.get(o["id"]) is not None for o in (URL, IP, DOMAIN))
    # the same pair as related-to is accepted, and a relationship to an object already stored
    store.ingest_bundle(common.make_bundle([link("related-to", URL, IP)]))
    store.ingest_bundle(common.make_bundle([FILE, link("communicates-with", FILE, IP)]))
    assert len(store.relationships(of=IP["id"])) == 3


def test_pycti_s_bundle_with_a_wrong_pair_leaves_the_work_in_error(
    connector_helper: Callable[..., Any], opencti: OpenCTIEmulator
) -> None:
    helper = connector_helper("INTERNAL_ENRICHMENT")
    work_id = helper.api.work.initiate_work(helper.connect_id, "enrichment")
    bundle = common.make_bundle([AUTHOR, FILE, URL, link("communicates-with", FILE, URL)])
    helper.send_stix2_bundle(common.serialize_bundle(bundle).decode(), work_id=work_id)
    helper.api.work.to_processed(work_id, "sent")
    work = opencti.wait_for_work(work_id, timeout=15)
    assert work.in_error
    assert "not allowed between StixFile and Url" in " ".join(
        str(e) for e in work.summary()["errors"]
    )
    assert opencti.relationships(of=FILE["id"]) == []
    assert opencti.platform.store.get(URL["id"]) is not None
