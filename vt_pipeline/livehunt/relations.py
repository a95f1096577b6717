"""A kept file's VirusTotal relations, for `livehunt_file_relations` (issue 19 section 5).

With `VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_RELATIONSHIPS` (off by default: no call), each file
the filters kept in a window is looked up once with the relations embedded
(`?relationships=`), and a relation whose descriptors are not enough takes one call of its own:
the same code as enrichment (`virustotal/relations.py`), counted in the window's VT calls. The
raw answers are this asset's record (the lookup's `relationships` and the relations' own
pages), so `livehunt_stix_bundles` maps them (`stix/enrichment/relations.py`, enrichment's
mapping too) without a call, and rebuilding the bundles replays them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.relations import related_objects
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.relations import (
    describe,
    endpoint_name,
    fetch_relations,
    stored_relations,
)
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

# What a window's record holds per file: {"lookup": {"data": {"id", "relationships"}},
# "pages": {endpoint: VT's answer or its error envelope}}.
FileRelations = dict[str, dict[str, Any]]


async def file_relations(
    session: VirusTotalSession, sha256: str, wanted: list[str], limit: int, lines: list[str]
) -> dict[str, Any]:
    """One file's record: its lookup with the relations embedded, then what they lack, raw;
    a line for the window's metadata in `lines`."""
    pages: dict[str, Any] = {}
    try:
        lookup = await session.lookup("file", sha256, wanted)
    except VirusTotalError as exc:  # the bundle goes on without this file's relations
        lines.append(f"{sha256[:16]}…: lookup failed: {exc}")
        return {"lookup": {}, "pages": {}}
    if lookup is None:
        lines.append(f"{sha256[:16]}…: VirusTotal has no record of it")
        return {"lookup": {}, "pages": {}}

    def store(endpoint: str, _object_id: str, body: dict[str, Any]) -> None:
        pages[endpoint] = body

    relations = await fetch_relations(session, "file", sha256, lookup, wanted, limit, store=store)
    for relation in relations:  # a failure is kept as VT's error envelope, its reason replayed
        if relation.error is not None and relation.calls:
            pages[endpoint_name("file", relation.name)] = {"error": {"message": relation.error}}
    lines.append(f"{sha256[:16]}…: {describe(relations)}")
    data = lookup.get("data") or {}
    return {
        "lookup": {"data": {"id": data.get("id"), "relationships": data.get("relationships")}},
        "pages": pages,
    }


def related_bundle_objects(
    objects: Sequence[StixObject],
    record: FileRelations,
    items: Sequence[dict[str, Any]],
    wanted: Sequence[str],
    limit: int,
) -> tuple[list[StixObject], Counter[str]]:
    """The related objects of the bundle's files (`objects`) from the window's stored record,
    by enrichment's mapping: observables, relationships with the file's markings, dated by VT's
    analysis of the file (its notification in `items`). No call: a relation not stored is
    counted as failed."""
    dates = {}
    for item in items:
        hashes = vt.file_hashes(item)
        stamp = vt.analysis_timestamp(item)
        if "SHA-256" in hashes and stamp is not None:
            dates[hashes["SHA-256"]] = common.stix_timestamp(stamp)
    added: list[StixObject] = []
    stats: Counter[str] = Counter()
    for obj in objects:
        sha256 = (obj.get("hashes") or {}).get("SHA-256") if obj.get("type") == "file" else None
        stored = record.get(sha256) if sha256 else None
        if stored is None:
            continue
        relations = stored_relations(
            "file", sha256, stored.get("lookup") or {}, stored.get("pages") or {}, wanted, limit
        )
        found, counts = related_objects(
            obj["id"],
            "StixFile",
            "file",
            relations,
            dates.get(sha256, common.FIXED_TIMESTAMP),
            obj.get("object_marking_refs") or (),
        )
        added += found
        stats.update(counts)
    return added, stats
