"""What the file is: VT's popular threat classification as Malware families.

Each family name at least `file_malware_family_min_engines` engines agree on becomes a Malware
(`is_family`, pycti's id from the name: it merges with the family other connectors created),
`related-to` from the file: OpenCTI's matrix has no StixFile -> Malware type (Malware -> file
is `drops`/`downloads`, which VT does not say), and `related-to` is allowed between any two
types. The relationship says how many engines gave the name and VT's suggested label.
"""

from __future__ import annotations

from vt_pipeline.stix import notes
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target
from vt_pipeline.stix.enrichment.threat_objects import clean_name, malware
from vt_pipeline.virustotal.expansions import Expansions, FamilyVote


def agreed_families(min_engines: int, expansions: Expansions | None) -> list[FamilyVote]:
    """The family names enough engines agree on, the most agreed first."""
    if expansions is None:
        return []
    return [vote for vote in expansions.families if vote.count >= min_engines]


def family_ids(builder: Builder, expansions: Expansions | None) -> list[str]:
    """The Malware ids of the file's agreed families (what the ATT&CK addition links to)."""
    votes = agreed_families(builder.options.file_malware_family_min_engines, expansions)
    names = [clean_name(builder, vote.name) for vote in votes]
    return [malware(builder, name)["id"] for name in names if name]


def add_families(builder: Builder, target: Target) -> None:
    add_file_families(builder, target.entity["id"], _expansions(target), target.created)


def add_file_families(
    builder: Builder, file_id: str, expansions: Expansions | None, created: str
) -> None:
    """The agreed families, `related-to` from the file `file_id` (an enriched entity or a
    Livehunt file: `livehunt/relations.py`)."""
    votes = agreed_families(builder.options.file_malware_family_min_engines, expansions)
    label = expansions.threat_label if expansions is not None else None
    for vote in votes:
        name = clean_name(builder, vote.name)
        if name is None:
            continue
        family = malware(builder, name)
        builder.add_counted(family, "malware_families")
        description = f"{vote.count} VirusTotal engines name this file {notes.escape_cell(name)}"
        if label:
            description += f" (suggested threat label {notes.escape_cell(label)})"
        builder.relate("related-to", file_id, family["id"], created, description + ".")


def _expansions(target: Target) -> Expansions | None:
    return getattr(target.report, "expansions", None)


MALWARE_FAMILIES = Addition(
    "malware families",
    lambda options, target: target.is_file and options.file_malware_family,
    add_families,
)
