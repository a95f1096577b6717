"""The score written on the entity and the detection Indicator on its value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vt_pipeline.stix import common
from vt_pipeline.stix.enrichment.base import (
    FILE_ENTITY_TYPES,
    HASH_LENGTHS,
    HEX,
    OPTION_PREFIX,
    SCO_TYPES,
    Addition,
    Builder,
    ScoreDecision,
    Target,
    entity_hashes,
    extension,
    instant,
    plus_minutes,
)


def decide_score(
    builder: Builder, entity: dict[str, Any], vt_score: int, ext: str, existing: int | None
) -> ScoreDecision:
    """Write VT's score on the entity unless `replace_with_lower_score=False` and the existing
    one is higher (whatever kind VT's score is: GTI or ratio)."""
    lower = existing is not None and vt_score < existing
    if lower and not builder.options.replace_with_lower_score:
        builder.stats["score_kept"] += 1
        return ScoreDecision(None, existing, existing)
    extension(entity, ext)["score"] = vt_score  # where OpenCTI's export puts it
    entity["x_opencti_score"] = vt_score  # what pycti reads first
    return ScoreDecision(vt_score, vt_score)


def indicator_dates(builder: Builder, vt_date: str | None) -> tuple[str, str] | None:
    """(`created`, `valid_from`) of an Indicator whose evidence VT dated `vt_date`: valid from
    the request, created at VT's date but never after the request (a file uploaded on request is
    analysed after it); without a request, both VT's date. `modified` is `valid_from`. None when
    there is neither date."""
    if builder.requested is None:
        return None if vt_date is None else (vt_date, vt_date)
    if vt_date is None:
        return builder.requested, builder.requested
    return min(vt_date, builder.requested, key=instant), builder.requested


def add_detection_indicator(builder: Builder, target: Target) -> None:
    """An Indicator on the value when VT's malicious count reaches the configured threshold
    (> 0), valid for the configured minutes from the request (else from VT's analysis date),
    `based-on` the entity. Dates: the package docstring."""
    entity, entity_type, options = target.entity, target.entity_type, builder.options
    prefix = OPTION_PREFIX[entity_type]
    threshold = getattr(options, f"{prefix}_indicator_create_positives")
    malicious = target.report.malicious
    if not (threshold > 0 and malicious is not None and malicious >= threshold):
        return
    dates = indicator_dates(builder, target.analysed_at)
    if dates is None:
        builder.stats["invalid_values"] += 1  # neither request nor analysis date: no validity
        return
    created, valid_from = dates
    pattern, main_type = _pattern(entity_type, target.subject, entity_hashes(entity))
    if pattern is None:
        builder.stats["invalid_values"] += 1
        return
    indicator = common.indicator(
        pattern,
        pattern_type="stix",
        name=target.subject,
        description=(
            f"{malicious} VirusTotal engines flag this {main_type} as malicious "
            f"(threshold {threshold})."
        ),
        valid_from=valid_from,
        created=created,
        modified=valid_from,
        created_by_ref=builder.author_id,
        object_marking_refs=builder.markings,
        main_observable_type=main_type,
    )
    minutes = getattr(options, f"{prefix}_indicator_valid_minutes")
    valid_until = plus_minutes(valid_from, minutes)
    if valid_until is not None:
        indicator["valid_until"] = valid_until
    indicator["x_opencti_detection"] = bool(getattr(options, f"{prefix}_indicator_detect"))
    score = target.decision.effective
    score = score if score is not None else target.vt_score
    if score is not None:
        indicator["x_opencti_score"] = score
    indicator["external_references"] = [target.reference]
    if indicator["id"] == entity["id"]:
        return
    builder.add_counted(indicator, "indicators")
    builder.relate("based-on", indicator["id"], entity["id"], created)


def _pattern(entity_type: str, subject: str, hashes: Mapping[str, str]) -> tuple[str | None, str]:
    """STIX pattern and OpenCTI main observable type of a detection Indicator."""
    if entity_type in FILE_ENTITY_TYPES:
        for algorithm in ("SHA-256", "SHA-1", "MD5"):
            value = hashes.get(algorithm) or (
                subject if HASH_LENGTHS.get(len(subject)) == algorithm else None
            )
            if value and HEX.match(value):
                return f"[file:hashes.'{algorithm}' = '{value.lower()}']", "StixFile"
        return None, "StixFile"
    if not subject:
        return None, entity_type
    return common.value_pattern(SCO_TYPES[entity_type], subject), entity_type


DETECTION_INDICATOR = Addition(
    "detection indicator",
    lambda options, target: target.detection_indicator,
    add_detection_indicator,
)
