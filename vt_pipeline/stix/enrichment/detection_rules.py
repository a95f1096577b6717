"""Crowdsourced Sigma and IDS (Snort/Suricata) results as Indicators, `related-to` from the
file, like crowdsourced YARA: public rules, so the Indicators carry no marking.

- Sigma (`sigma_analysis_results`): VT's file object names the rule only; its content comes
  from `/sigma_rules/{id}` (fetched once per rule and run), rebuilt as Sigma YAML (title,
  status, description, references, author, tags, logsource, detection, falsepositives, fields,
  level): pattern type `sigma`. A rule VT did not serve is left out (`sigma_rule_missing`).
- IDS (`crowdsourced_ids_results`): the rule's own text is `rule_raw`: pattern type `snort`
  when VT names a Snort ruleset as its source, else `suricata` (Emerging Threats' rules, VT's
  usual source, are Suricata rules). A result without `rule_raw` is left out
  (`ids_rule_text_missing`): an Indicator needs its rule.
Valid from the request, created at VT's analysis (never after the request), as YARA's.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from vt_pipeline.stix import common, notes
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target, text
from vt_pipeline.stix.enrichment.score import indicator_dates
from vt_pipeline.stix.enrichment.threat_objects import clean_name
from vt_pipeline.virustotal.expansions import Expansions, IdsMatch, SigmaRule

RULE_LIMIT = 100_000  # characters of one rule: more is not a rule
_UNWRITABLE = re.compile("[\ud800-\udfff\x00]")
_SIGMA_ORDER = ("title", "status", "description", "references", "author", "tags")
_LOG_SOURCE_ORDER = ("category", "product", "service", "definition")


def sigma_yaml(rule: SigmaRule) -> str | None:
    """The rule as Sigma YAML, from the parts `/sigma_rules/{id}` gives; None without a
    detection."""
    attrs = rule.attributes
    detection = attrs.get("detection")
    if not isinstance(detection, dict) or not isinstance(detection.get("condition"), str):
        return None
    details = detection.get("details") if isinstance(detection.get("details"), dict) else {}
    document: dict[str, Any] = {key: attrs[key] for key in _SIGMA_ORDER if attrs.get(key)}
    source = attrs.get("log_source")
    if isinstance(source, dict):
        document["logsource"] = {k: source[k] for k in _LOG_SOURCE_ORDER if source.get(k)}
    # Keys sorted: the same rule gives the same text (its Indicator's id) whatever the order
    # VT's JSON, or a stored copy of it, has.
    document["detection"] = {**_sorted(details), "condition": detection["condition"]}
    for key, sigma_key in (("false_positives", "falsepositives"), ("fields", "fields")):
        if attrs.get(key):
            document[sigma_key] = attrs[key]
    if attrs.get("level"):
        document["level"] = attrs["level"]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def add_sigma_indicators(builder: Builder, target: Target) -> None:
    expansions = _expansions(target)
    if expansions is None:
        return
    for match in expansions.sigma:
        rule = expansions.sigma_rules.get(match.rule_id)
        pattern = sigma_yaml(rule) if rule is not None else None
        if pattern is None:
            builder.stats["sigma_rule_missing"] += 1
            continue
        name = clean_name(builder, match.title) or clean_name(builder, rule.attributes.get("title"))
        lines = [
            f"- Level: {notes.escape_cell(text(match.level))}",
            f"- Source: {notes.escape_cell(text(match.source))}",
            f"- Author: {notes.escape_cell(text(match.author))}",
            f"- VirusTotal rule id: {notes.escape_cell(match.rule_id)}",
        ]
        indicator = _indicator(builder, target, pattern, "sigma", name or match.rule_id, lines)
        if indicator is not None:
            builder.add_counted(indicator, "sigma_indicators")
            builder.relate("related-to", target.entity["id"], indicator["id"], target.created)


def ids_pattern_type(match: IdsMatch) -> str:
    return "snort" if "snort" in str(match.source or "").lower() else "suricata"


def add_ids_indicators(builder: Builder, target: Target) -> None:
    expansions = _expansions(target)
    if expansions is None:
        return
    for match in expansions.ids:
        if match.raw is None:
            builder.stats["ids_rule_text_missing"] += 1
            continue
        name = clean_name(builder, match.message) or match.rule_id
        lines = [
            f"- Severity: {notes.escape_cell(text(match.severity))}",
            f"- Category: {notes.escape_cell(text(match.category))}",
            f"- Source: {notes.escape_cell(text(match.source))}",
            f"- Rule: {notes.escape_cell(match.rule_id)}",
        ]
        pattern_type = ids_pattern_type(match)
        indicator = _indicator(builder, target, match.raw, pattern_type, name, lines)
        if indicator is not None:
            builder.add_counted(indicator, "ids_indicators")
            builder.relate("related-to", target.entity["id"], indicator["id"], target.created)


def _indicator(
    builder: Builder,
    target: Target,
    pattern: str,
    pattern_type: str,
    name: str,
    lines: list[str],
) -> StixObject | None:
    if len(pattern) > RULE_LIMIT or _UNWRITABLE.search(pattern):
        builder.stats["invalid_values"] += 1
        return None
    created, valid_from = indicator_dates(builder, target.analysed_at) or (
        target.created,
        target.created,
    )
    return common.indicator(
        pattern,
        pattern_type=pattern_type,
        name=name,
        description="\n".join(lines),
        valid_from=valid_from,
        created=created,
        modified=valid_from,
        created_by_ref=builder.author_id,
        object_marking_refs=(),
        main_observable_type="StixFile",
    )


def _expansions(target: Target) -> Expansions | None:
    return getattr(target.report, "expansions", None)


SIGMA_RULES = Addition(
    "crowdsourced Sigma",
    lambda options, target: target.is_file and options.file_import_sigma,
    add_sigma_indicators,
)
IDS_RULES = Addition(
    "crowdsourced IDS",
    lambda options, target: target.is_file and options.file_import_ids,
    add_ids_indicators,
)
