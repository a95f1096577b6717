"""A looked-up object's relations against the VirusTotal emulator through the real vt-py: what
the lookup carries costs nothing more, a relation whose embedded page is short of the cap (or
whose URL descriptors lack the URL) costs one call, never one per object; failures are kept."""

from __future__ import annotations

from typing import Any

import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.relationships import relationships_of
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.virustotal.relations import RELATIONSHIPS, fetch_relations
from vt_pipeline.virustotal.reports import Relation
from vt_pipeline.virustotal.resource import VirusTotalSession
from vt_pipeline_tests.conftest import PUBLIC_KEY
from vt_pipeline_tests.virustotal.test_virustotal_resource import call, vt

pytestmark = pytest.mark.integration
FILE_RELATIONS = list(RELATIONSHIPS["file"])


def relations_of(
    emulator: VirusTotalEmulator, kind: str, key: str, wanted: list[str], limit: int, **vt_args: Any
) -> tuple[dict[str, Any], tuple[Relation, ...], int]:
    """The lookup with `wanted` embedded, its relations, and the calls spent on them."""

    async def work(s: VirusTotalSession) -> tuple[dict[str, Any], tuple[Relation, ...], int]:
        lookup = await s.lookup(kind, key, wanted)
        assert lookup is not None
        before = s.log.total
        relations = await fetch_relations(s, kind, key, lookup, wanted, limit)  # type: ignore[arg-type]
        return lookup, relations, s.log.total - before

    return call(vt(emulator, **vt_args), work)


def test_the_lookup_carries_the_descriptors_and_only_unnamed_urls_cost_a_call(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    sha256 = vt_corpus.targets().malicious_file
    lookup, relations, calls = relations_of(vt_emulator, "file", sha256, FILE_RELATIONS, 5)
    embedded = lookup["data"]["relationships"]
    assert set(embedded) == set(FILE_RELATIONS)
    by_name = {r.name: r for r in relations}
    assert calls == 1 and by_name["itw_urls"].calls == 1  # its descriptors do not name URLs
    assert all(r.calls == 0 for name, r in by_name.items() if name != "itw_urls")
    for name, relation in by_name.items():
        assert relation.error is None and len(relation.objects) <= 5
        valid = len(embedded[name]["data"]) - relation.invalid
        assert len(relation.objects) == min(5, valid), name
    # in VT's order: the first descriptors of the lookup
    domains = [d["id"] for d in embedded["contacted_domains"]["data"][:5]]
    assert [o.value for o in by_name["contacted_domains"].objects] == domains
    # a relation's own call answers full objects: VT's score is known, not from descriptors
    assert all(o.counts for o in by_name["itw_urls"].objects)
    assert not any(o.counts for o in by_name["contacted_domains"].objects)
    assert vt_emulator.count("file") == 1 and vt_emulator.count("file_itw_urls") == 1


def test_a_cap_above_vt_s_embedded_page_costs_one_call_per_relation_that_has_more(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    wanted = ["contacted_domains", "contacted_ips", "dropped_files", "contacted_urls"]
    served = relationships_of(vt_emulator.api)

    def sizes(sha256: str) -> list[int]:
        return [len(served.related("files", vt_corpus.files[sha256], n)) for n in wanted]

    sha256 = next(  # a file with relations both longer and shorter than VT's embedded page
        f for f in sorted(vt_corpus.files) if max(sizes(f)) > 20 and min(sizes(f)) <= 20
    )
    lookup, relations, calls = relations_of(vt_emulator, "file", sha256, wanted, 25)
    embedded = lookup["data"]["relationships"]
    more = [n for n in wanted if (embedded[n].get("meta") or {}).get("cursor")]
    assert more and len(more) < len(wanted)  # both cases are there
    assert calls == len(more)
    for relation in relations:
        if relation.name in more:
            assert relation.calls == 1 and len(relation.objects) > 20
        else:
            items = embedded[relation.name]["data"]  # hostile URLs among them are dropped
            assert relation.calls == 0 and len(relation.objects) + relation.invalid == len(items)


def test_resolutions_name_the_other_end(vt_emulator: VirusTotalEmulator, vt_corpus: Corpus) -> None:
    targets = vt_corpus.targets()
    _, (by_domain,), _ = relations_of(vt_emulator, "domain", targets.domain, ["resolutions"], 10)
    assert {o.kind for o in by_domain.objects} == {"ip_address"}
    _, (by_ip,), _ = relations_of(vt_emulator, "ip_address", targets.ip, ["resolutions"], 10)
    assert by_ip.objects and {o.kind for o in by_ip.objects} == {"domain"}


def test_a_refused_relation_keeps_its_reason_and_the_others_come(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    domain = vt_corpus.targets().domain
    wanted = ["resolutions", "downloaded_files"]
    lookup, relations, calls = relations_of(
        vt_emulator, "domain", domain, wanted, 10, api_key=PUBLIC_KEY
    )
    assert "downloaded_files" not in lookup["data"]["relationships"]  # not for a public key
    resolutions, downloaded = relations
    assert resolutions.error is None and resolutions.objects
    assert downloaded.error is not None and "premium" in downloaded.error and calls == 1


def test_an_unknown_object_s_relation_is_a_reason_not_an_exception(
    vt_emulator: VirusTotalEmulator,
) -> None:
    async def work(s: VirusTotalSession) -> tuple[Relation, ...]:
        return await fetch_relations(s, "file", "f" * 64, {}, ["dropped_files"], 10)

    (relation,) = call(vt(vt_emulator), work)
    assert relation.calls == 1 and relation.objects == ()
    assert relation.error is not None and "NotFoundError" in relation.error
