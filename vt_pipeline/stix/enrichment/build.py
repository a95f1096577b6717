"""The enrichment of one observable: read VT's report, decide the score, then run every
addition of `ADDITIONS` that applies, in order, each in its own section (a failure drops that
addition only). `build_enrichment` and `build_indicator_enrichment` are the entry points."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pycti import STIX_EXT_OCTI, STIX_EXT_OCTI_SCO

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment import (
    attack_patterns,
    comment_notes,
    detection_rules,
    families,
    file_properties,
    gti_context,
    network,
    relations,
    report_notes,
    score,
    threat_objects,
    yara_rules,
)
from vt_pipeline.stix.enrichment.base import (
    ENTITY_TYPES,
    GUI_KIND,
    GUI_ROOT,
    HASH_LENGTHS,
    HEX,
    REFERENCE_SOURCE,
    REPORT_KIND,
    SCO_TYPES,
    UNSAFE_TEXT,
    Addition,
    Builder,
    EnrichmentMappingOptions,
    EnrichmentResult,
    ScoreDecision,
    Target,
    copied_entity,
    entity_hashes,
    entity_time,
    existing_score,
    quote_path,
    requested_stamp,
    timestamp,
)
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.reports import AnyReport, FileReport, Report, read_report

# Every kind of addition, in the order they run (a later one sees what an earlier one set on the
# entity: the detection Indicator's pattern uses the hashes the file properties added).
ADDITIONS: tuple[Addition, ...] = (
    file_properties.FILE_PROPERTIES,
    score.DETECTION_INDICATOR,
    yara_rules.CROWDSOURCED_YARA,
    threat_objects.EXPANSION_VALUES_DROPPED,
    families.MALWARE_FAMILIES,
    attack_patterns.ATTACK_PATTERNS,  # after the families it links to
    detection_rules.SIGMA_RULES,
    detection_rules.IDS_RULES,
    gti_context.GTI_CONTEXT,
    comment_notes.COMMENT_NOTE,
    network.AUTONOMOUS_SYSTEM_AND_COUNTRY,
    network.A_RECORDS,
    relations.RELATED_OBJECTS,
    report_notes.NOTES,
)

VtData = dict[str, Any] | AnyReport | None


def build_enrichment(
    stix_entity: dict[str, Any],
    entity_type: str,
    vt_object: VtData,
    options: EnrichmentMappingOptions,
    yara_rulesets: Mapping[str, dict[str, Any]] | None = None,
    *,
    requested_at: datetime | None = None,
) -> EnrichmentResult:
    """Enrich one observable (`entity_type` in ENTITY_TYPES; a Hostname is looked up as a VT
    domain) with its VT report (`virustotal.reports`, relations included) or its raw VT `data`
    object. `yara_rulesets`: crowdsourced ruleset id -> raw VT `data` of `/yara_rulesets/{id}`.
    `requested_at`: when the enrichment was asked (timezone aware); the Indicators are valid
    from it (package docstring). None only for a caller without a request time: the Indicators
    are then valid from VT's analysis date. The input entity is not modified. Raises ValueError
    only for a caller error (unsupported type, entity without id, naive `requested_at`); bad VT
    data is dropped and counted."""
    if entity_type not in SCO_TYPES:
        raise ValueError(f"cannot enrich entity type {entity_type!r}: not one of {ENTITY_TYPES}")
    requested = requested_stamp(requested_at)
    entity = copied_entity(stix_entity)
    builder = Builder(options, yara_rulesets or {}, entity, requested)
    outcome = enrich(builder, entity, entity_type, vt_object, protect_score=True)
    return builder.result(entity, outcome.written)


def build_indicator_enrichment(
    indicator: dict[str, Any],
    lookups: Sequence[tuple[str, str, VtData]],
    options: EnrichmentMappingOptions,
    yara_rulesets: Mapping[str, dict[str, Any]] | None = None,
    *,
    requested_at: datetime | None = None,
) -> EnrichmentResult:
    """Enrich an Indicator through its observable values: `lookups` holds (OpenCTI observable
    type, value, VT report or data, None when VT had nothing) per value of
    `x_opencti_observable_values`. `requested_at` as in `build_enrichment` (it dates the
    crowdsourced YARA Indicators).

    Each value becomes its observable (`based-on` from the Indicator) with VT's knowledge and
    relationships starting at the observable. The Indicator's score is decided once: the highest
    VT score of its values (the most dangerous value decides), then `replace_with_lower_score`.
    No detection Indicator is created per value: the entity already is that Indicator. With
    `replace_with_lower_score=False` the observables are sent without a score, since their
    current score in OpenCTI is unknown here (their notes still carry VT's)."""
    requested = requested_stamp(requested_at)
    entity = copied_entity(indicator)
    builder = Builder(options, yara_rulesets or {}, entity, requested)
    scores: list[int] = []
    created = entity_time(entity)
    for observable_type, value, vt_object in lookups:
        builder.stats["lookups"] += 1
        observable = indicator_observable(builder, observable_type, value)
        if observable is None:
            builder.stats["invalid_observable_values"] += 1
            continue
        if observable["id"] in builder.objects:  # the same value twice: enriched once
            continue
        builder.add(observable)
        builder.stats["observables"] += 1
        if vt_object is None:
            builder.stats["lookups_not_found"] += 1
            builder.relate("based-on", entity["id"], observable["id"], created)
            continue
        outcome = enrich(
            builder,
            observable,
            observable_type,
            vt_object,
            protect_score=False,
            write_score=options.replace_with_lower_score,
            detection_indicator=False,
            note_refs=[entity["id"]],
        )
        builder.relate("based-on", entity["id"], observable["id"], outcome.analysed_at or created)
        builder.add_reference(entity, outcome.reference, extension=STIX_EXT_OCTI)
        if outcome.vt_score is not None:
            scores.append(outcome.vt_score)
    written = None
    if scores:
        existing = existing_score(entity)
        written = score.decide_score(builder, entity, max(scores), STIX_EXT_OCTI, existing).written
    return builder.result(entity, written)


@dataclass(frozen=True)
class Outcome:
    """What enriching one observable gave: VT's own score, the score written, the analysis
    date and the GUI reference."""

    vt_score: int | None = None
    written: int | None = None
    analysed_at: str | None = None
    reference: StixObject | None = None


def enrich(
    builder: Builder,
    entity: dict[str, Any],
    entity_type: str,
    vt_object: VtData,
    *,
    protect_score: bool,
    write_score: bool = True,
    detection_indicator: bool = True,
    note_refs: Sequence[str] = (),
) -> Outcome:
    """Edit `entity` in place with VT's knowledge and add the new objects around it."""
    kind = REPORT_KIND[entity_type]
    report = vt_object if isinstance(vt_object, Report) else read_report(kind, vt_object)
    if report is None:
        builder.stats["invalid_vt_object"] += 1
        return Outcome()
    builder.stats["invalid_values"] += report.invalid_counts
    analysed_at = timestamp(report.analysed_at)
    created = analysed_at or entity_time(entity)
    subject = _subject(entity, entity_type, report)
    reference = common.external_reference(
        REFERENCE_SOURCE, _gui_url(entity_type, subject, report), "VirusTotal report"
    )
    vt_score = report.gti_score
    score_kind = "GTI threat score"
    if vt_score is None:
        vt_score = report.detection_score
        score_kind = "detection ratio"
    decision = ScoreDecision(None, None)
    if vt_score is None:
        builder.stats["no_score"] += 1
    elif write_score:
        existing = existing_score(entity) if protect_score else None
        decision = score.decide_score(builder, entity, vt_score, STIX_EXT_OCTI_SCO, existing)
    builder.add_reference(entity, reference, extension=STIX_EXT_OCTI_SCO)
    target = Target(
        entity=entity,
        entity_type=entity_type,
        report=report,
        subject=subject,
        analysed_at=analysed_at,
        created=created,
        reference=reference,
        vt_score=vt_score,
        score_kind=score_kind,
        decision=decision,
        note_refs=tuple(note_refs),
        detection_indicator=detection_indicator,
    )
    for addition in ADDITIONS:
        if addition.applies(builder.options, target):
            with builder.section():
                addition.add(builder, target)
    return Outcome(vt_score, decision.written, analysed_at, reference)


def _subject(entity: Mapping[str, Any], entity_type: str, report: AnyReport) -> str:
    """What the entity is on VT: a file's SHA-256 (else its best hash), the value otherwise."""
    if isinstance(report, FileReport):
        hashes = {**entity_hashes(entity), **report.hashes}
        best = next((hashes[k] for k in ("SHA-256", "SHA-1", "MD5") if k in hashes), None)
        return best or report.object_id or entity["id"]
    value = entity.get("value")
    return value if isinstance(value, str) and value else report.object_id or ""


def _gui_url(entity_type: str, subject: str, report: AnyReport) -> str:
    kind = GUI_KIND[entity_type]
    if kind == "url":
        return f"{GUI_ROOT}/url/{report.url_object_id(subject)}"
    return f"{GUI_ROOT}/{kind}/{quote_path(subject)}"


def indicator_observable(builder: Builder, observable_type: Any, value: Any) -> StixObject | None:
    """The observable of one of an Indicator's values, or None when it is unusable."""
    if observable_type not in SCO_TYPES or not isinstance(value, str):
        return None
    value = value.strip()
    if not value or UNSAFE_TEXT.search(value):
        return None
    sco_type = SCO_TYPES[observable_type]
    extras = {"created_by_ref": builder.author_id, "object_marking_refs": builder.markings}
    if sco_type in ("file", "artifact"):
        algorithm = HASH_LENGTHS.get(len(value))
        if algorithm is None or not HEX.match(value):
            return None
        hashes = {algorithm: value.lower()}
        obj: StixObject = {
            "type": sco_type,
            "spec_version": "2.1",
            "id": common.sco_id(sco_type, {"hashes": hashes}),
            "hashes": hashes,
        }
        if sco_type == "artifact":
            obj["url"] = f"{GUI_ROOT}/file/{value.lower()}"
        return common.add_observable_extras(obj, **extras)
    if not _valid_value(observable_type, value):
        return None
    return common.value_observable(sco_type, value, **extras)


def _valid_value(observable_type: str, value: str) -> bool:
    if observable_type in ("IPv4-Addr", "IPv6-Addr"):
        kind = ipaddress.IPv4Address if observable_type == "IPv4-Addr" else ipaddress.IPv6Address
        try:
            kind(value)
        except ValueError:
            return False
        return True
    if observable_type == "Url":
        return vt.is_valid_url(value)
    return len(value) <= 253 and " " not in value
