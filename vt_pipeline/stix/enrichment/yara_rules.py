"""Crowdsourced YARA: one YARA Indicator per matched rule, `related-to` from the file."""

from __future__ import annotations

import re

from vt_pipeline.stix import common, notes
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target, text, timestamp
from vt_pipeline.stix.enrichment.score import indicator_dates
from vt_pipeline.stix.yara import YaraParseError, find_rule
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.reports import FileReport, YaraMatch

MAX_YARA_RESULTS = 100
_UNSAFE_SOURCE = re.compile("[\ud800-\udfff]")


def add_yara_indicators(builder: Builder, target: Target) -> None:
    """One YARA Indicator per crowdsourced YARA result whose rule is found in its fetched
    ruleset (the rule alone, rebuilt like stix/yara.py does), `related-to` from the file."""
    report = target.report
    if not isinstance(report, FileReport):
        return
    results = report.yara
    builder.stats["invalid_values"] += report.invalid_yara
    if len(results) > MAX_YARA_RESULTS:
        builder.stats["invalid_values"] += len(results) - MAX_YARA_RESULTS
    for result in results[:MAX_YARA_RESULTS]:
        indicator = yara_indicator(builder, result, target.created)
        if indicator is None:
            continue
        builder.add_counted(indicator, "yara_indicators")
        builder.relate("related-to", target.entity["id"], indicator["id"], target.created)


def yara_indicator(builder: Builder, result: YaraMatch, created: str) -> StixObject | None:
    ruleset_id, rule_name = result.ruleset_id, result.rule_name
    if not isinstance(ruleset_id, str) or not isinstance(rule_name, str) or not rule_name:
        builder.stats["invalid_values"] += 1
        return None
    ruleset = builder.yara_rulesets.get(ruleset_id)
    if not isinstance(ruleset, dict):
        builder.stats["yara_ruleset_missing"] += 1
        return None
    attrs = ruleset.get("attributes")
    if not isinstance(attrs, dict):
        builder.stats["yara_parse_error"] += 1  # a ruleset without readable rules
        return None
    try:
        rule = find_rule(attrs.get("rules"), rule_name)
    except YaraParseError:
        builder.stats["yara_parse_error"] += 1
        return None
    if rule is None:
        builder.stats["yara_rule_missing"] += 1
        return None
    if _UNSAFE_SOURCE.search(rule.source):
        builder.stats["invalid_values"] += 1  # not writable as UTF-8 (lone surrogate)
        return None
    rule_date = (
        timestamp(rule.date) or timestamp(vt.safe_timestamp(attrs.get("creation_date"))) or created
    )
    # VT still runs the rule: valid from the request, created at the rule's own date
    rule_created, valid_from = indicator_dates(builder, rule_date) or (rule_date, rule_date)
    ruleset_name = text(result.ruleset_name) or text(attrs.get("name"))
    author = text(result.author) or text(attrs.get("author"))
    source = text(result.source) or text(attrs.get("source"))
    lines = [
        notes.escape_cell(
            rule.description or text(result.description) or f"YARA rule {rule.name}.",
            notes.SUBJECT_LIMIT,
        ),
        "",
        f"- Ruleset: {notes.escape_cell(ruleset_name)} ({notes.escape_cell(ruleset_id)})",
        f"- Author: {notes.escape_cell(author)}",
        f"- Source: {notes.escape_cell(source)}",
    ]
    return common.indicator(
        rule.source,
        pattern_type="yara",
        name=rule.name,
        description="\n".join(lines),
        valid_from=valid_from,
        created=rule_created,
        modified=valid_from,
        created_by_ref=builder.author_id,
        object_marking_refs=(),
        main_observable_type="StixFile",
    )


CROWDSOURCED_YARA = Addition(
    "crowdsourced YARA",
    lambda options, target: target.is_file and options.file_import_yara,
    add_yara_indicators,
)
