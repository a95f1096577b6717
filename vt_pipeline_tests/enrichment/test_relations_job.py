"""End to end, issue 19 section 1: VT relations through the sensor and `vt_enrichment_job`.

Requests are OpenCTI's (the emulator publishes them on the listen queue), the sensor turns them
into a run, the job asks the VirusTotal emulator and sends its bundles through real pycti to the
OpenCTI emulator, which refuses any relationship outside OpenCTI's matrix. What is checked: what
OpenCTI holds for each relation (the first N as VT orders them), every work complete without
error (the matrix accepted every relationship), the VT calls per request equal to the documented
cost (one lookup carrying every relation's descriptors, one call for a relation whose
descriptors do not name its URLs), nothing new on re-enrichment, and a relation that fails (403
without the licence, 404, a malformed answer) leaving the base enrichment intact with the reason
in the run and on the work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from vt import url_id

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID, OpenCTIResource
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.virustotal.relations import RELATIONSHIPS
from vt_pipeline_tests.conftest import PUBLIC_KEY
from vt_pipeline_tests.enrichment.test_job import Enrich, enrich, metadata, rows, work_message

pytestmark = pytest.mark.integration
__all__ = ["enrich"]  # the fixture, shared with test_job

LIMIT = 4
ALL = {
    "file_relationships": list(RELATIONSHIPS["file"]),
    "domain_relationships": list(RELATIONSHIPS["domain"]),
    "ip_relationships": list(RELATIONSHIPS["ip_address"]),
    "url_relationships": list(RELATIONSHIPS["url"]),
    "relationships_limit": LIMIT,
    "gti_context": False,  # section 4 has its own tests; its call would blur the count here
}
# (entity type, relation) -> (relationship type, True when it starts at the related object)
LINKS = {
    "contacted_domains": ("communicates-with", False),
    "contacted_ips": ("communicates-with", False),
    "contacted_urls": ("related-to", False),
    "dropped_files": ("drops", False),
    "execution_parents": ("related-to", True),
    "bundled_files": ("related-to", False),
    "itw_urls": ("related-to", False),
}


def value(item: dict[str, Any], subject: str) -> str | None:
    """What an item of a relation names (a descriptor or a full object)."""
    attrs = item.get("attributes") or {}
    if item["type"] == "url":
        return attrs.get("url") or (item.get("context_attributes") or {}).get("url")
    if item["type"] == "resolution":  # the IP followed by the domain: the end that is not us
        if item["id"].endswith(subject):
            return item["id"].removesuffix(subject)
        return item["id"].removeprefix(subject) if item["id"].startswith(subject) else None
    return item["id"]


def expected(storage: Path, kind: str, key: str, relation: str) -> list[str]:
    """The first LIMIT objects of a relation as the job had them: embedded in the stored lookup,
    else the relation's own stored page."""
    responses = ResponseStore(storage)
    lookup = responses.latest(kind, key)
    assert lookup is not None
    data = lookup.body["data"]
    part = (data.get("relationships") or {}).get(relation)
    own = responses.latest(f"{kind}_{relation}", key)
    items = (own.body if own is not None else part)["data"]  # type: ignore[index]
    items = items if isinstance(items, list) else [items] if items else []
    values = [v for item in items if (v := value(item, data["id"]))]
    return values[:LIMIT]


def named(obj: dict[str, Any]) -> str:
    return obj.get("value") or obj["hashes"]["SHA-256"]


def test_relations_through_the_sensor_and_the_job(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    targets = vt_corpus.targets()
    file_id = opencti.create_observable("StixFile", hashes={"SHA-256": targets.malicious_file})
    domain_id = opencti.create_observable("Domain-Name", targets.domain)
    ip_id = opencti.create_observable("IPv4-Addr", targets.ip)
    url_entity = opencti.create_observable("Url", targets.url)
    entities = [file_id, domain_id, ip_id, url_entity]

    def tick(cursor: str | None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(
            instance=dagster_instance,
            cursor=cursor,
            resources={"opencti": cti_resource},
            definitions=dg.Definitions.merge(
                enrichment_defs, dg.Definitions(resources=job_resources(**ALL))
            ),
        )
        return opencti_enrichment_sensor.evaluate_tick(context)

    def enrich_all(cursor: str | None) -> tuple[dg.ExecuteInProcessResult, list[str], str | None]:
        works = [opencti.ask_enrichment(e, ENRICHMENT_CONNECTOR_ID) for e in entities]
        first = tick(cursor)
        (run_request,) = first.run_requests or []
        result = vt_enrichment_job.execute_in_process(
            run_config=run_request.run_config,
            resources=job_resources(**ALL),
            instance=dagster_instance,
            tags={**run_request.tags, "dagster/run_key": run_request.run_key},
        )
        assert result.success
        return result, works, tick(first.cursor).cursor

    result, works, cursor = enrich_all(None)
    for work_id in works:  # every relationship was accepted by OpenCTI's matrix
        status, in_error, message = work_message(opencti, work_id)
        assert status == "complete" and not in_error, message
        assert "VirusTotal relations:" in message

    storage = tmp_path / "storage"
    # The file: each relation's first LIMIT objects, linked as OpenCTI's matrix allows
    for relation, (rel_type, from_related) in LINKS.items():
        want = expected(storage, "file", targets.malicious_file, relation)
        assert want, relation
        direction = "to" if from_related else "from"
        got = {named(o) for o in opencti.related(file_id, rel_type, direction)}
        assert set(want) <= got, relation
    linked = {named(o) for o in opencti.related(file_id, "communicates-with")}
    assert len(linked) <= 2 * LIMIT  # contacted domains and IPs, capped each
    # The domain resolves to its resolutions' IPs; files communicate with it
    domain_ips = {named(o) for o in opencti.related(domain_id, "resolves-to")}
    assert set(expected(storage, "domain", targets.domain, "resolutions")) <= domain_ips
    communicating = {named(o) for o in opencti.related(domain_id, "communicates-with", "to")}
    assert set(expected(storage, "domain", targets.domain, "communicating_files")) <= communicating
    # The IP: the domains that resolved to it, the files that talk to it
    resolving = {named(o) for o in opencti.related(ip_id, "resolves-to", "to")}
    assert set(expected(storage, "ip_address", targets.ip, "resolutions")) <= resolving
    talking = {named(o) for o in opencti.related(ip_id, "communicates-with", "to")}
    assert set(expected(storage, "ip_address", targets.ip, "communicating_files")) <= talking
    # The URL: its serving IP and where it redirects, related-to (no other type in OpenCTI)
    url_key = url_id(targets.url)
    related = {named(o) for o in opencti.related(url_entity, "related-to")}
    for relation in ("last_serving_ip_address", "redirects_to", "contacted_domains"):
        assert set(expected(storage, "url", url_key, relation)) <= related, relation

    # VT's score on related objects VT sent with their stats (a relation's own call)
    itw = expected(storage, "file", targets.malicious_file, "itw_urls")
    scored = [o for o in opencti.related(file_id, "related-to") if o.get("value") in itw]
    assert scored and all(opencti.score_of(o["id"]) is not None for o in scored)

    # Cost: one lookup per request carrying every relation's descriptors, plus one call for the
    # relations whose descriptors do not name their URLs (itw_urls, redirects_to)
    calls = {r["entity"][:16]: r["vt_calls"] for r in rows(result).values()}
    assert sorted(calls.values()) == [1, 1, 2, 2]
    assert vt_emulator.count("file_itw_urls") == 1 and vt_emulator.count("url_redirects_to") == 1
    assert vt_emulator.count("file_contacted_urls") == 0  # its descriptors carry the URL
    for kind, names in RELATIONSHIPS.items():
        for name in names:
            if (kind, name) not in (("file", "itw_urls"), ("url", "redirects_to")):
                assert vt_emulator.count(f"{kind}_{name}") == 0, name
    assert metadata(result)["requests_enriched"] == 4

    # Re-enrichment: the responses come from the cache and nothing new reaches OpenCTI
    before = opencti.counts()
    relationships = len(opencti.relationships())
    again, works, _ = enrich_all(cursor)
    for work_id in works:
        status, in_error, message = work_message(opencti, work_id)
        assert status == "complete" and not in_error, message
    assert opencti.counts() == before and len(opencti.relationships()) == relationships
    assert all(r["vt_calls"] == 0 for r in rows(again).values())


def test_a_relation_the_key_may_not_read_fails_alone(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, vt_emulator: VirusTotalEmulator
) -> None:
    """`downloaded_files` needs a premium key: the public key's lookup leaves it out, its own
    call is refused (403), and the domain is enriched all the same, the reason in the run."""
    domain = vt_corpus.targets().domain
    entity = opencti.create_observable("Domain-Name", domain)
    result, (request,) = enrich(
        entity,
        virustotal={"api_key": PUBLIC_KEY},
        domain_relationships=["resolutions", "downloaded_files"],
        gti_context=False,
    )
    assert result.success
    (row,) = rows(result).values()
    assert row["outcome"] == "enriched" and row["vt_calls"] == 2
    status, in_error, message = work_message(opencti, request.work_id)
    assert status == "complete" and not in_error
    assert "downloaded_files failed (1 call)" in message and "premium" in message
    assert "resolutions" in message
    assert opencti.score_of(entity) is not None and opencti.related(entity, "resolves-to")
    assert vt_emulator.count("domain_downloaded_files", 403) == 1


def test_a_missing_or_malformed_relation_leaves_the_base_enrichment(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    """A cached lookup of a file VT no longer has (its relation answers 404) and a stored page
    that is not VT's shape: each relation fails with its reason, the file is still enriched."""
    targets = vt_corpus.targets()
    store = ResponseStore(tmp_path / "storage")
    gone = "e" * 64
    known = vt_corpus.files[targets.malicious_file]
    store.put("file", gone, {"data": {**known, "id": gone}})  # VT has since lost it
    # A lookup cached before the relations were configured (no descriptors), and a stored page
    # of one of them that is not VT's shape
    store.put("file", targets.malicious_file, {"data": known})
    store.put("file_contacted_ips", targets.malicious_file, {"data": "not a list", "meta": {}})
    gone_id = opencti.create_observable("StixFile", hashes={"SHA-256": gone})
    file_id = opencti.create_observable("StixFile", hashes={"SHA-256": targets.malicious_file})
    result, requests = enrich(
        gone_id, file_id, file_relationships=["contacted_ips", "dropped_files"], gti_context=False
    )
    by_entity = {r["entity"]: r for r in rows(result).values()}
    assert {r["outcome"] for r in by_entity.values()} == {"enriched"}
    messages = {}
    for request in requests:
        status, in_error, message = work_message(opencti, request.work_id)
        assert status == "complete" and not in_error, message
        messages[request.entity_id] = message
    assert "contacted_ips failed (1 call)" in messages[gone_id]
    assert "NotFoundError" in messages[gone_id]
    assert "contacted_ips failed (cached): data is a str" in messages[file_id]
    assert "dropped_files" in messages[file_id] and "dropped_files failed" not in messages[file_id]
    for entity in (gone_id, file_id):
        assert opencti.score_of(entity) is not None and opencti.notes_about(entity)
    assert opencti.related(file_id, "drops")
