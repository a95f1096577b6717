"""Related objects of VT relations (`contacted_ips`, `resolutions`...) as observables linked to
the enriched entity.

Each related object becomes its observable (File by its hashes, Domain-Name, IPv4-Addr or
IPv6-Addr, Url) with VT's score when VT sent its analysis stats (a relation's own call sends
full objects; descriptors embedded in the lookup carry none). Related observables are shared
reference objects: no marking (like resolved IPs); the relationships carry the entity's.

The relationship of each (entity, relation) pair is one OpenCTI accepts (its
`stixCoreRelationshipsMapping`, opencti-graphql `src/database/stix.ts`; the OpenCTI emulator
refuses every other pair): `communicates-with` from a file to the domains and IPs it contacts
(and from the files that communicate with a domain or IP), `drops` from a file to what it
dropped, `resolves-to` from a domain to its IPs. OpenCTI has no type for the rest (a file and a
URL, a URL and an IP, a file and its execution parent or bundled files, a domain and its
subdomains or downloaded files): `related-to`, the relationship OpenCTI accepts between any two
entities, in the direction VT names it (from the entity to the related object, except where the
related object is the actor: a communicating file, a resolving domain, an execution parent).
A new relation is one entry in `RELATIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target
from vt_pipeline.virustotal.reports import RelatedObject, Relation, ReportKind


class Link(NamedTuple):
    """How a related object is linked: the relationship type, and whether it starts at the
    related object (True) or at the entity (False)."""

    relationship: str
    from_related: bool = False


RELATED_TO = Link("related-to")
# (entity's VT kind, relation) -> its link; Artifacts and Hostnames have their own exceptions.
RELATIONS: dict[tuple[str, str], Link] = {
    ("file", "contacted_domains"): Link("communicates-with"),
    ("file", "contacted_ips"): Link("communicates-with"),
    ("file", "contacted_urls"): RELATED_TO,  # no StixFile -> Url type in OpenCTI
    ("file", "dropped_files"): Link("drops"),
    ("file", "execution_parents"): Link("related-to", from_related=True),
    ("file", "bundled_files"): RELATED_TO,
    ("file", "itw_urls"): RELATED_TO,
    ("domain", "resolutions"): Link("resolves-to"),
    ("domain", "communicating_files"): Link("communicates-with", from_related=True),
    ("domain", "downloaded_files"): RELATED_TO,
    ("domain", "referrer_files"): Link("related-to", from_related=True),
    ("domain", "subdomains"): RELATED_TO,
    ("ip_address", "resolutions"): Link("resolves-to", from_related=True),
    ("ip_address", "communicating_files"): Link("communicates-with", from_related=True),
    ("ip_address", "downloaded_files"): RELATED_TO,
    ("url", "last_serving_ip_address"): RELATED_TO,  # no Url -> IPv4-Addr type in OpenCTI
    ("url", "downloaded_files"): RELATED_TO,
    ("url", "redirects_to"): RELATED_TO,
    ("url", "contacted_domains"): RELATED_TO,
    ("url", "contacted_ips"): RELATED_TO,
}
# Pairs OpenCTI's matrix lacks for these entity types: related-to instead.
_EXCEPTIONS: dict[tuple[str, str], Link] = {
    ("Artifact", "dropped_files"): RELATED_TO,  # Artifact -> StixFile: only interpreted-by
    ("Hostname", "communicating_files"): Link("related-to", from_related=True),  # no file type
}
_OBSERVABLE_TYPES = {"file": "file", "domain": "domain-name", "url": "url"}


def add_related(builder: Builder, target: Target) -> None:
    """Each relation's objects as observables linked to the entity (see the module docstring)."""
    add_relations(
        builder,
        target.entity["id"],
        target.entity_type,
        target.report.kind,
        target.report.relations,
        target.created,
    )


def add_relations(
    builder: Builder,
    entity_id: str,
    entity_type: str,
    kind: ReportKind,
    relations: Sequence[Relation],
    created: str,
) -> None:
    """Each relation's objects as observables linked to the entity `entity_id`."""
    for relation in relations:
        link = _EXCEPTIONS.get((entity_type, relation.name)) or RELATIONS.get((kind, relation.name))
        if link is None:
            builder.stats["invalid_values"] += 1  # a relation this mapping does not know
            continue
        builder.stats["invalid_values"] += relation.invalid
        if relation.error is not None:
            builder.stats["relations_failed"] += 1
            continue
        for related in relation.objects:
            observable = related_observable(builder, related)
            if observable is None:
                builder.stats["invalid_values"] += 1
                continue
            if observable["id"] == entity_id:
                continue  # VT relating an object to itself
            _keep_score(builder, observable)
            builder.add_counted(observable, "related_objects")
            ends = (observable["id"], entity_id)
            source, dest = ends if link.from_related else ends[::-1]
            builder.relate(link.relationship, source, dest, created)


def _keep_score(builder: Builder, observable: StixObject) -> None:
    """An observable met again with VT's score (a full object) gives it to the one already
    built without (a descriptor of another relation, a resolved A record)."""
    existing = builder.objects.get(observable["id"])
    score = observable.get("x_opencti_score")
    if existing is not None and score is not None and "x_opencti_score" not in existing:
        existing["x_opencti_score"] = score


def related_observable(builder: Builder, related: RelatedObject) -> StixObject | None:
    """The observable of a related object, with VT's score when VT sent its stats (not with
    `replace_with_lower_score=False`: the observable's current score is unknown here)."""
    extras = {
        "created_by_ref": builder.author_id,
        "object_marking_refs": (),
        "score": related.vt_score if builder.options.replace_with_lower_score else None,
    }
    if related.kind == "file":
        hashes = dict(related.hashes) or {"SHA-256": related.value}
        obj: StixObject = {
            "type": "file",
            "spec_version": "2.1",
            "id": common.sco_id("file", {"hashes": hashes}),
            "hashes": hashes,
        }
        return common.add_observable_extras(obj, **extras)
    if related.kind == "ip_address":
        stix_type = "ipv6-addr" if ":" in related.value else "ipv4-addr"
        return common.value_observable(stix_type, related.value, **extras)
    stix_type = _OBSERVABLE_TYPES.get(related.kind)
    if stix_type is None:
        return None
    return common.value_observable(stix_type, related.value, **extras)


RELATED_OBJECTS = Addition(
    "related objects", lambda options, target: bool(target.report.relations), add_related
)
