"""What Livehunt adds to a kept file from VirusTotal (issue 19 section 5), by enrichment's code.

Off by default (no call). The options (`FileExpansions`, from `LivehuntSettings`):
- `VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_RELATIONSHIPS`: the file is looked up once with the
  relations embedded (`?relationships=`), and a relation whose descriptors are not enough takes
  one call of its own (`virustotal/relations.py`);
- `..._FILE_MALWARE_FAMILY` (+ `_MIN_ENGINES`): VT's popular threat classification, which the
  notification carries (it is the file object): no call;
- `..._FILE_ATTACK_PATTERNS`: `GET /files/{id}/behaviour_mitre_trees`, one call per kept file,
  through enrichment's `ExpansionFetcher`.
The calls are `livehunt_file_relations`'s, counted in the window's VT calls; its record is the
raw answers (the lookup's `relationships`, the relations' own pages, the ATT&CK trees, or VT's
error), so `livehunt_stix_bundles` maps them with enrichment's modules (`stix/enrichment/`
relations, families, attack_patterns) without a call, and rebuilding the bundles replays them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.attack_patterns import add_file_attack_patterns
from vt_pipeline.stix.enrichment.base import Builder, EnrichmentMappingOptions, entity_objects
from vt_pipeline.stix.enrichment.families import add_file_families
from vt_pipeline.stix.enrichment.relations import add_relations
from vt_pipeline.storage.responses import ResponseStore, StoredResponse
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.expansion_fetch import ExpansionFetcher
from vt_pipeline.virustotal.expansions import (
    ExpansionOptions,
    Expansions,
    read_attributes,
    read_mitre_trees,
)
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
MITRE_TREES = endpoint_name("file", "behaviour_mitre_trees")  # the ATT&CK page's key


@dataclass(frozen=True)
class FileExpansions:
    """What a kept file gets (the Livehunt settings of issue 19 section 5)."""

    relationships: tuple[str, ...] = ()
    limit: int = 10
    malware_family: bool = False
    min_engines: int = 3
    attack_patterns: bool = False

    @property
    def fetches(self) -> bool:
        """Whether a kept file costs VT calls (the family is in the notification)."""
        return bool(self.relationships) or self.attack_patterns

    @property
    def any(self) -> bool:
        return self.fetches or self.malware_family

    def mapping_options(self) -> EnrichmentMappingOptions:
        return EnrichmentMappingOptions(
            file_malware_family=self.malware_family,
            file_malware_family_min_engines=self.min_engines,
            file_attack_patterns=self.attack_patterns,
        )


async def window_relations(
    session: VirusTotalSession, files: Sequence[str], wanted: FileExpansions, lines: list[str]
) -> FileRelations:
    """The records of a window's kept files, fetched concurrently (the session bounds the calls
    in flight); a line per file, in their order, for the window's metadata in `lines`."""
    found = await asyncio.gather(*(file_relations(session, sha256, wanted) for sha256 in files))
    lines += [f"{sha256[:16]}…: {line}" for sha256, (_, line) in zip(files, found, strict=True)]
    return {sha256: record for sha256, (record, _) in zip(files, found, strict=True)}


async def file_relations(
    session: VirusTotalSession, sha256: str, wanted: FileExpansions
) -> tuple[dict[str, Any], str]:
    """One file's record: its lookup with the relations embedded and what they lack, and its
    ATT&CK trees, raw (a failure as VT's error envelope), both asked at once; and its line."""
    pages: dict[str, Any] = {}

    async def techniques() -> str | None:
        if not wanted.attack_patterns:
            return None
        fetcher = ExpansionFetcher(session, _Record(pages), timedelta(0))
        found = await fetcher.expand(
            "file", sha256, {"id": sha256}, ExpansionOptions(attack_patterns=True)
        )
        if found.errors:  # kept to be replayed: the bundle says it again
            reason = found.errors[0][1]
            pages.setdefault(MITRE_TREES, {"error": {"message": reason}})
            return f"attack_patterns failed: {reason}"
        return f"attack_patterns {len(found.techniques or ())} (1 call)"

    async def relations() -> tuple[dict[str, Any], str | None]:
        if not wanted.relationships:
            return {}, None
        return await _relations(session, sha256, wanted, pages)

    (lookup_part, related), trees = await asyncio.gather(relations(), techniques())
    return {"lookup": lookup_part, "pages": pages}, "; ".join(filter(None, (related, trees)))


async def _relations(
    session: VirusTotalSession, sha256: str, wanted: FileExpansions, pages: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The lookup's part of the record and its line; the relations' own pages into `pages`."""
    names = list(wanted.relationships)
    try:
        lookup = await session.lookup("file", sha256, names)
    except VirusTotalError as exc:  # the bundle goes on without this file's relations
        return {}, f"lookup failed: {exc}"
    if lookup is None:
        return {}, "VirusTotal has no record of it"

    def store(endpoint: str, _object_id: str, body: dict[str, Any]) -> None:
        pages[endpoint] = body

    relations = await fetch_relations(
        session, "file", sha256, lookup, names, wanted.limit, store=store
    )
    for relation in relations:  # a failure is kept as VT's error envelope, its reason replayed
        if relation.error is not None and relation.calls:
            pages[endpoint_name("file", relation.name)] = {"error": {"message": relation.error}}
    data = lookup.get("data") or {}
    part = {"data": {"id": data.get("id"), "relationships": data.get("relationships")}}
    return part, describe(relations)


class _Record(ResponseStore):
    """The expansions' response store over one file's record: nothing reused (a window asks
    VT once), each answer put in the record's pages by endpoint."""

    def __init__(self, pages: dict[str, Any]) -> None:  # no directory: the record is the store
        self.pages = pages

    def recent(self, *_: Any, **__: Any) -> StoredResponse | None:
        return None

    def put(
        self,
        object_type: str,
        object_id: str,
        body: dict[str, Any],
        now: datetime | None = None,
    ) -> StoredResponse:
        self.pages[object_type] = body
        return StoredResponse(body, now or datetime.now(UTC), Path(object_type))


def stored_expansions(
    notification: Mapping[str, Any], pages: Mapping[str, Any], attack_patterns: bool
) -> Expansions:
    """A file's expansions read again without a call: the family from its notification, the
    techniques from the stored trees (a failure or a page not stored: None with the reason)."""
    base, invalid = read_attributes(notification)
    if not attack_patterns:
        return dataclasses.replace(base, invalid=invalid)
    body = pages.get(MITRE_TREES)
    error = body.get("error") if isinstance(body, dict) else None
    techniques, reason = None, None
    if body is None:
        reason = "not fetched from VirusTotal"
    elif isinstance(error, dict):
        reason = str(error.get("message") or error.get("code"))
    else:
        try:
            techniques, dropped = read_mitre_trees(body)
            invalid += dropped
        except (ValueError, TypeError, AttributeError) as exc:
            reason = f"VirusTotal's answer could not be read: {exc}"
    errors = (("attack_patterns", reason),) if reason else ()
    return dataclasses.replace(base, techniques=techniques, invalid=invalid, errors=errors)


def related_bundle_objects(
    objects: Sequence[StixObject],
    record: FileRelations,
    items: Sequence[dict[str, Any]],
    wanted: FileExpansions,
) -> tuple[list[StixObject], Counter[str]]:
    """What the bundle's files (`objects`) get, from the window's stored record and their
    notifications (`items`), by enrichment's mapping: related observables, families and
    ATT&CK techniques, relationships with the file's markings, dated by VT's analysis of the
    file. No call: what is not stored is counted as failed."""
    notifications: dict[str, dict[str, Any]] = {}
    dates = {}
    for item in items:
        sha256 = vt.file_hashes(item).get("SHA-256")
        stamp = vt.analysis_timestamp(item)
        if sha256:
            notifications.setdefault(sha256, item)
            if stamp is not None:
                dates.setdefault(sha256, common.stix_timestamp(stamp))
    options = wanted.mapping_options()
    added: list[StixObject] = []
    stats: Counter[str] = Counter()
    for obj in objects:
        sha256 = (obj.get("hashes") or {}).get("SHA-256") if obj.get("type") == "file" else None
        if not sha256 or (sha256 not in record and sha256 not in notifications):
            continue
        stored = record.get(sha256) or {}
        adds, failed = _additions(
            obj["id"],
            sha256,
            stored,
            notifications.get(sha256) or {},
            dates.get(sha256, common.FIXED_TIMESTAMP),
            wanted,
        )
        found, counts = entity_objects(
            obj["id"], obj.get("object_marking_refs") or (), options, *adds
        )
        added += found
        stats.update(counts)
        stats["expansions_failed"] += failed
    return added, +stats  # no zero counts in the mapping table


def _additions(
    file_id: str,
    sha256: str,
    stored: Mapping[str, Any],
    notification: Mapping[str, Any],
    created: str,
    wanted: FileExpansions,
) -> tuple[list[Callable[[Builder], None]], int]:
    """The enrichment additions one file gets over what was stored for it, and how many of
    its expansions failed (their reasons are in `livehunt_file_relations`'s metadata)."""
    adds: list[Callable[[Builder], None]] = []
    failed = 0
    pages = stored.get("pages") or {}
    if wanted.relationships and stored:
        relations = stored_relations(
            "file", sha256, stored.get("lookup") or {}, pages, wanted.relationships, wanted.limit
        )
        adds.append(
            lambda builder: add_relations(builder, file_id, "StixFile", "file", relations, created)
        )
    if wanted.malware_family or wanted.attack_patterns:
        expansions = stored_expansions(notification, pages, wanted.attack_patterns)

        failed = len(expansions.errors)

        def count_dropped(builder: Builder) -> None:
            builder.stats["invalid_values"] += expansions.invalid

        adds.append(count_dropped)
        if wanted.malware_family:  # before the techniques: they link to the family
            adds.append(lambda builder: add_file_families(builder, file_id, expansions, created))
        if wanted.attack_patterns:
            adds.append(
                lambda builder: add_file_attack_patterns(
                    builder, file_id, sha256, expansions, created
                )
            )
    return adds, failed
