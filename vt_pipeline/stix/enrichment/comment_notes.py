"""VT community comments as one Note per entity: the newest first (as many as
`VIRUSTOTAL_COMMENTS_LIMIT` fetched), every cell escaped and cut at 300 characters
(stix/notes.py).

The note's id comes from its content and the newest comment's date, so re-enriching with the
same comments upserts the same note and a new comment gives a new one (the older note stays,
as the comments VT showed then). It carries the entity's markings: it is about the entity."""

from __future__ import annotations

from vt_pipeline.stix import notes
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target, timestamp
from vt_pipeline.stix.enrichment.report_notes import add_note
from vt_pipeline.virustotal.expansions import Expansions

TITLE = "VirusTotal community comments"


def add_comment_note(builder: Builder, target: Target) -> None:
    expansions: Expansions | None = getattr(target.report, "expansions", None)
    if expansions is None or not expansions.comments:
        return
    rows = []
    for comment in expansions.comments:
        date = timestamp(comment.date)
        votes = f"+{comment.positive or 0} / -{comment.negative or 0}"
        rows.append(
            [
                date.replace(".000Z", "Z") if date else None,
                comment.text,
                ", ".join(comment.tags) or None,
                votes,
            ]
        )
    header = [
        f"The {len(rows)} newest VirusTotal community comments on the {target.entity_type} "
        f"{notes.escape_cell(target.subject, notes.SUBJECT_LIMIT)}, newest first."
    ]
    table = notes.table(("Date", "Comment", "Tags", "Votes"), rows)
    content = notes.report(TITLE, header, [("Comments", table)])
    newest = timestamp(max((c.date or 0) for c in expansions.comments)) or target.created
    add_note(builder, content, TITLE, [target.entity["id"], *target.note_refs], newest)


COMMENT_NOTE = Addition(
    "community comments",
    lambda options, target: options.create_note_comments,
    add_comment_note,
)
