"""The threat knowledge objects the expansions send (Malware, Attack-Pattern, Intrusion-Set,
Campaign, Report), with the ids pycti generates so that they merge with what other connectors
created: `Malware.generate_id(name)` (the name lower-cased: VT's `agenttesla` and GTI's
`AGENTTESLA` are one Malware), `AttackPattern.generate_id(name, x_mitre_id)` (the ATT&CK id
alone decides, as for the MITRE ATT&CK connector's objects), `IntrusionSet.generate_id(name)`,
`Campaign.generate_id(name)`, `Report.generate_id(name, published)`.

They are shared reference objects: no marking (OpenCTI adds a re-sent marking to the existing
object, which would restrict it for everyone), fixed dates unless the source dates them. What
links them to the enriched entity is knowledge about the entity and carries its markings.
"""

from __future__ import annotations

from typing import Any

from pycti import AttackPattern, Campaign, IntrusionSet, Malware, Report

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.base import NAME_LIMIT, UNSAFE_TEXT, Addition, Builder, Target

DESCRIPTION_LIMIT = 5000


def clean_name(builder: Builder, value: Any) -> str | None:
    """A usable name (one line, no control or bidi characters, bounded), else counted."""
    names = builder.clean_texts([value], NAME_LIMIT, 1)
    return names[0] if names else None


def clean_description(value: Any) -> str | None:
    """Free text VT or GTI wrote, without invisible characters, bounded; None when unusable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = UNSAFE_TEXT.sub(" ", value).strip()
    return text[:DESCRIPTION_LIMIT] or None


def _sdo(
    builder: Builder,
    stix_type: str,
    object_id: str,
    created: str,
    modified: str,
    **properties: Any,
) -> StixObject:
    obj: StixObject = {
        "type": stix_type,
        "spec_version": "2.1",
        "id": object_id,
        "created": created,
        "modified": modified,
        "created_by_ref": builder.author_id,
    }
    obj.update({key: value for key, value in properties.items() if value not in (None, [], "")})
    return obj


def malware(
    builder: Builder,
    name: str,
    *,
    created: str = common.FIXED_TIMESTAMP,
    modified: str = common.FIXED_TIMESTAMP,
    description: str | None = None,
    aliases: list[str] | None = None,
) -> StixObject:
    return _sdo(
        builder,
        "malware",
        Malware.generate_id(name),
        created,
        max(created, modified),
        name=name,
        is_family=True,
        description=description,
        aliases=aliases,
    )


def attack_pattern(builder: Builder, name: str, mitre_id: str) -> StixObject:
    url = f"https://attack.mitre.org/techniques/{mitre_id.replace('.', '/')}/"
    return _sdo(
        builder,
        "attack-pattern",
        AttackPattern.generate_id(name, mitre_id),
        common.FIXED_TIMESTAMP,
        common.FIXED_TIMESTAMP,
        name=name,
        x_mitre_id=mitre_id,
        external_references=[{"source_name": "mitre-attack", "external_id": mitre_id, "url": url}],
    )


def intrusion_set(
    builder: Builder,
    name: str,
    created: str,
    modified: str,
    description: str | None,
    aliases: list[str],
) -> StixObject:
    return _sdo(
        builder,
        "intrusion-set",
        IntrusionSet.generate_id(name),
        created,
        max(created, modified),
        name=name,
        description=description,
        aliases=aliases,
    )


def campaign(
    builder: Builder, name: str, created: str, modified: str, description: str | None
) -> StixObject:
    return _sdo(
        builder,
        "campaign",
        Campaign.generate_id(name),
        created,
        max(created, modified),
        name=name,
        description=description,
    )


def report(
    builder: Builder,
    name: str,
    published: str,
    modified: str,
    description: str | None,
    object_refs: list[str],
) -> StixObject:
    return _sdo(
        builder,
        "report",
        Report.generate_id(name, published),
        published,
        max(published, modified),
        name=name,
        published=published,
        report_types=["threat-report"],
        description=description,
        object_refs=object_refs,
    )


def _count_dropped(builder: Builder, target: Target) -> None:
    builder.stats["invalid_values"] += target.report.expansions.invalid


# What the expansions' readers dropped as unusable (virustotal/expansions.py), counted once.
EXPANSION_VALUES_DROPPED = Addition(
    "expansion values dropped",
    lambda options, target: getattr(target.report, "expansions", None) is not None,
    _count_dropped,
)
