"""The notes of an enrichment: VT's analysis report (stats, engines, categories, attributes) and
the note saying a higher existing score was kept. Every cell is escaped (stix/notes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vt_pipeline.stix import common, notes
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target, text, timestamp
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.reports import (
    AnyReport,
    DomainReport,
    FileReport,
    IpReport,
    NetworkReport,
    UrlReport,
)

MAX_NAMES = 100
MAX_ENGINES = 500
MAX_CATEGORIES = 100


def add_notes(builder: Builder, target: Target) -> None:
    """The analysis report (files: when `file_create_note_full_report`), and a note of VT's
    score when a higher existing score was kept."""
    entity_type, vt_score, created = target.entity_type, target.vt_score, target.created
    refs = [target.entity["id"], *target.note_refs]
    date = created.replace(".000Z", "Z")
    header = [
        f"VirusTotal analysis of the {entity_type} "
        f"{notes.escape_cell(target.subject, notes.SUBJECT_LIMIT)}, dated {date}.",
    ]
    if vt_score is not None:
        header.append(f"VirusTotal score: {vt_score} ({target.score_kind}).")
    if not target.is_file or builder.options.file_create_note_full_report:
        content = _report(builder, entity_type, header, target.report)
        title = "VirusTotal full report" if target.is_file else "VirusTotal results"
        add_note(builder, content, title, refs, created)
    if target.decision.kept is not None and vt_score is not None:
        content = notes.report(
            "VirusTotal score",
            [
                *header,
                f"The existing score {target.decision.kept} was kept: it is higher and "
                "VIRUSTOTAL_REPLACE_WITH_LOWER_SCORE is false.",
            ],
            [],
        )
        add_note(builder, content, "VirusTotal score", refs, created)


def add_note(
    builder: Builder, content: str, abstract: str, refs: Sequence[str], created: str
) -> None:
    note = common.note(
        content,
        abstract=abstract,
        object_refs=refs,
        created=created,
        created_by_ref=builder.author_id,
        object_marking_refs=builder.markings,
        created_in_id=True,
    )
    builder.add_counted(note, "notes")


def _report(builder: Builder, entity_type: str, header: list[str], report: AnyReport) -> str:
    is_file = isinstance(report, FileReport)
    columns = notes.FILE_STATS_COLUMNS if is_file else notes.NETWORK_STATS_COLUMNS
    engine_columns = notes.FILE_ENGINE_COLUMNS if is_file else notes.NETWORK_ENGINE_COLUMNS
    sections = [
        ("Last analysis stats", notes.stats_table(dict(report.counts), columns)),
        ("Last analysis results", _engine_table(builder, report, engine_columns, is_file)),
    ]
    if isinstance(report, NetworkReport):
        sections.append(("Categories", _categories_table(builder, report)))
    if builder.options.include_attributes_in_note:
        sections.append(("Attributes", _attributes_table(builder, report)))
    return notes.report(
        "VirusTotal full report" if is_file else "VirusTotal results", header, sections
    )


def _engine_table(
    builder: Builder, report: AnyReport, columns: Sequence[str], is_file: bool
) -> str:
    builder.stats["invalid_values"] += report.invalid_engines
    cell = _Cells(builder).cell
    rows = []
    for result in report.engines:
        cells = [cell(result.engine_name) or cell(result.name)]
        if is_file:
            cells.append(cell(result.engine_version))
        cells += [cell(result.method), cell(result.category), cell(result.result)]
        rows.append(cells)
    if not rows:
        return ""
    body = notes.table(columns, rows[:MAX_ENGINES])
    if len(rows) > MAX_ENGINES:
        builder.stats["invalid_values"] += len(rows) - MAX_ENGINES
        body += f"\n\n{len(rows) - MAX_ENGINES} more engines not shown."
    return body


def _categories_table(builder: Builder, report: NetworkReport) -> str:
    builder.stats["invalid_values"] += report.invalid_categories
    cell = _Cells(builder).cell
    rows = [[cell(vendor), cell(category)] for vendor, category in report.categories]
    if len(rows) > MAX_CATEGORIES:
        builder.stats["invalid_values"] += len(rows) - MAX_CATEGORIES
    return notes.table(("Vendor", "Category"), rows[:MAX_CATEGORIES]) if rows else ""


def _attributes_table(builder: Builder, report: AnyReport) -> str:
    """The VT attributes upstream's `include_attributes_in_note` shows, per entity type."""
    cells = _Cells(builder)
    cell, date = cells.cell, cells.date
    rows: list[tuple[str, str | None]]
    if isinstance(report, FileReport):
        rows = [
            ("File type", cell(report.type_description)),
            ("Type tags", cells.joined(report.type_tags)),
            ("First submission", date(report.first_submission_date)),
            ("Last submission", date(report.last_submission_date)),
            ("Popular threat label", cell(report.threat_label)),
            ("Signature verification", cell(report.signature_verified)),
            ("Names", cells.joined(list(report.names))),
        ]
    elif isinstance(report, IpReport):
        rows = [
            ("Country", cell(report.country_raw)),
            ("Autonomous system", cell(report.asn_raw)),
            ("Autonomous system label", cell(report.as_owner)),
            ("Network", cell(report.network)),
        ]
    elif isinstance(report, UrlReport):
        rows = [
            ("Final URL", cell(report.last_final_url)),
            ("Title", cell(report.title)),
            ("Last HTTP response code", cell(report.last_http_response_code)),
            ("Last analysis date", date(report.last_analysis_date)),
        ]
    else:
        assert isinstance(report, DomainReport)
        rows = [
            ("Registrar", cell(report.registrar)),
            ("Creation date", date(report.creation_date)),
            ("Last analysis date", date(report.last_analysis_date)),
        ]
    rows.append(("Reputation", cell(report.reputation)))
    return notes.table(("Attribute", "Value"), rows)


class _Cells:
    """Table cells from VT values: scalars as text; other values dropped and counted."""

    def __init__(self, builder: Builder) -> None:
        self.stats = builder.stats

    def cell(self, value: Any) -> str | None:
        if value is None:
            return None
        result = text(value)
        if result is None:
            self.stats["invalid_values"] += 1
        return result

    def joined(self, values: Any) -> str | None:
        texts = [
            t for value in (values if isinstance(values, list) else []) if (t := self.cell(value))
        ]
        return ", ".join(texts[:MAX_NAMES]) or None

    def date(self, value: Any) -> str | None:
        stamp = timestamp(vt.safe_timestamp(value))
        if stamp is None and value is not None:
            self.stats["invalid_values"] += 1
        return stamp.replace(".000Z", "Z") if stamp else None


NOTES = Addition("notes", lambda options, target: True, add_notes)
