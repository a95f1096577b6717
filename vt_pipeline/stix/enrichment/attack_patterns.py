"""The ATT&CK techniques of VT's sandbox reports (`behaviour_mitre_trees`) as Attack-Patterns
with their `x_mitre_id` and pycti's id from it (so they are the MITRE ATT&CK connector's
objects), used by the file's family when it has one (Malware `uses` Attack-Pattern: the
family with the most engines agreeing, when families are on), else by the file itself
(StixFile `uses` Attack-Pattern). Both pairs are in OpenCTI's relationship matrix."""

from __future__ import annotations

from vt_pipeline.stix import notes
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target
from vt_pipeline.stix.enrichment.families import family_ids
from vt_pipeline.stix.enrichment.threat_objects import attack_pattern, clean_name
from vt_pipeline.virustotal.expansions import Expansions


def add_attack_patterns(builder: Builder, target: Target) -> None:
    expansions: Expansions | None = getattr(target.report, "expansions", None)
    add_file_attack_patterns(
        builder, target.entity["id"], target.subject, expansions, target.created
    )


def add_file_attack_patterns(
    builder: Builder, file_id: str, subject: str, expansions: Expansions | None, created: str
) -> None:
    """The techniques, used by the file's first family or by the file `file_id` (an enriched
    entity or a Livehunt file: `livehunt/relations.py`); `subject` names it in the text."""
    if expansions is None or not expansions.techniques:
        return
    families = family_ids(builder, expansions) if builder.options.file_malware_family else []
    user = families[0] if families else file_id
    for technique in expansions.techniques:
        name = clean_name(builder, technique.name)
        if name is None:
            continue
        pattern = attack_pattern(builder, name, technique.mitre_id)
        builder.add_counted(pattern, "attack_patterns")
        sandboxes = ", ".join(notes.escape_cell(s) for s in technique.sandboxes)
        builder.relate(
            "uses",
            user,
            pattern["id"],
            created,
            f"Seen by VirusTotal's sandboxes ({sandboxes}) running the file "
            f"{notes.escape_cell(subject)}.",
        )


ATTACK_PATTERNS = Addition(
    "ATT&CK techniques",
    lambda options, target: target.is_file and options.file_attack_patterns,
    add_attack_patterns,
)
